"""Fetch, copy or build one model into resources/models/{model}/."""

import sys
from pathlib import Path

from ftflow import prefetch, tiny


def main(source: dict, out: Path, corpus: list[str]) -> None:
    if "hub" in source:
        prefetch.fetch_hub(
            source["hub"], source["revision"], out, "model", allow_patterns=source.get("files")
        )
    elif "path" in source:
        prefetch.copy_local(Path(source["path"]), out)
    else:
        settings = {k: v for k, v in source["tiny"].items() if k != "corpus"}
        tmp = out.with_name(out.name + ".tmp")
        tiny.build(tmp, [Path(p) for p in corpus], **settings)
        tmp.rename(out)
    print(f"model ready in {out}", file=sys.stderr)


if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    main(snakemake.params.source, Path(snakemake.output.model), list(snakemake.input))  # noqa: F821
