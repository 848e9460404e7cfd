"""Turn the files of a fetched dataset repo into the one JSONL file ftflow prepares.

Hub datasets come as JSONL or Parquet shards (the Tulu-3 mixtures are Parquet);
``prepare_dataset`` reads one JSONL file, so the shards matching the configured
glob patterns are concatenated, in sorted name order, into ``data.jsonl``.
Raises ``FileNotFoundError`` naming the patterns when nothing matches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


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


# ------------------------------------------------------------- files the config names

PLANNING_ENV = "FTFLOW_PLANNING"  # set by ftflow.plan: the DAG is built, nothing runs
PLANNING_FLAGS = frozenset(
    {"-n", "--dry-run", "--dryrun", "--dag", "--rulegraph", "--filegraph", "--d3dag"}
)


def config_files(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(config key, path)`` of every local file or folder the config names."""
    found = []
    for name, model in (config.get("models") or {}).items():
        if model.get("chat_template"):
            found.append((f"models.{name}.chat_template", model["chat_template"]))
        if "path" in (model.get("source") or {}):
            found.append((f"models.{name}.source.path", model["source"]["path"]))
    for name, dataset in (config.get("datasets") or {}).items():
        if "path" in (dataset.get("source") or {}):
            found.append((f"datasets.{name}.source.path", dataset["source"]["path"]))
    for name, kernel in ((config.get("kernels") or {}).get("packages") or {}).items():
        if "path" in kernel["source"]:
            found.append((f"kernels.packages.{name}.source.path", kernel["source"]["path"]))
        if kernel.get("patch"):
            found.append((f"kernels.packages.{name}.patch", kernel["patch"]))
    for name, evaluation in (config.get("evaluations") or {}).items():
        for key in ("questions", "include_path"):
            if isinstance(evaluation.get(key), str):  # a {url} is fetched, not placed
                found.append((f"evaluations.{name}.{key}", evaluation[key]))
    return [(key, str(path)) for key, path in found]


def is_planning(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """True for ``snakemake -n/--dag/--rulegraph`` and ``python -m ftflow.plan``."""
    if environ.get(PLANNING_ENV):
        return True
    short = [a for a in argv if a.startswith("-") and not a.startswith("--")]
    return bool(PLANNING_FLAGS & set(argv)) or any("n" in a[1:] and a[1:].isalpha() for a in short)


def check_config_files(config: Mapping[str, Any], planning: bool) -> list[str]:
    """Refuse a config that names a missing file, before any job runs.

    Snakemake treats existing outputs whose inputs are missing as given, so a typo in a
    path would otherwise leave the old results standing ("Nothing to be done"). While
    planning or drawing (``planning``) the problems are returned as warnings instead.
    Raises ``FileNotFoundError`` naming every key and path.
    """
    problems = [
        f"{key}: {path} does not exist"
        for key, path in config_files(config)
        if not Path(path).exists()
    ]
    if problems and not planning:
        raise FileNotFoundError(
            "the config names files that do not exist (fix the key or create the file):\n  "
            + "\n  ".join(problems)
        )
    return problems
