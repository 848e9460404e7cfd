"""Turn the files of a fetched dataset repo into the one JSONL file ftflow prepares.

Hub datasets come as JSONL or Parquet shards (the Tulu-3 mixtures are Parquet);
``prepare_dataset`` reads one JSONL file, so the shards matching the configured
glob patterns are concatenated, in sorted name order, into ``data.jsonl``.
Raises ``FileNotFoundError`` naming the patterns when nothing matches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path


def matching(root: Path, patterns: Sequence[str]) -> list[Path]:
    found = sorted({p for pattern in patterns for p in Path(root).glob(pattern) if p.is_file()})
    if not found:
        raise FileNotFoundError(f"no file in {root} matches {list(patterns)}")
    return found


def export_jsonl(files: Sequence[Path], out: Path) -> int:
    """Concatenate JSONL/Parquet files into ``out`` (atomically); return the record count."""
    import pyarrow.parquet as pq

    tmp = out.with_name(out.name + ".tmp")
    count = 0
    try:
        with open(tmp, "w") as sink:
            for path in files:
                if path.suffix == ".parquet":
                    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096):
                        for row in batch.to_pylist():
                            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                            count += 1
                else:
                    with open(path) as source:
                        for line in source:
                            if line.strip():
                                sink.write(line if line.endswith("\n") else line + "\n")
                                count += 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return count
