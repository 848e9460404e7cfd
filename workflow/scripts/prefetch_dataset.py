"""Fetch or copy one raw dataset into resources/datasets/{dataset}/data.jsonl.

Also fetches a question file named by URL (rule prefetch_questions): the same pinning.
"""

import shutil
import sys
import tempfile
from pathlib import Path

from ftflow import datafiles, lock, prefetch


def main(source: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if "url" in source:
        lock.fetch(source["url"], out, source.get("sha256"))
    elif "hub" in source:
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            repo = prefetch.fetch_hub(
                source["hub"],
                source["revision"],
                Path(tmp) / "repo",
                "dataset",
                allow_patterns=source["files"],
            )
            n = datafiles.export_jsonl(datafiles.matching(repo, source["files"]), out)
            shutil.copyfile(repo / prefetch.MANIFEST_NAME, out.parent / prefetch.MANIFEST_NAME)
            print(f"{n} records from {source['hub']}@{source['revision']}", file=sys.stderr)
    else:
        prefetch.copy_local(Path(source["path"]), out)
    print(f"ready in {out}", file=sys.stderr)


if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    main(snakemake.params.source, Path(snakemake.output[0]))  # noqa: F821
