"""Fetch, copy or build one model into resources/models/{model}/."""

import shutil
import sys
from pathlib import Path

from ftflow import prefetch, records, tiny


def main(spec: dict, out: Path, corpus: list[str]) -> None:
    source = spec["source"]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    if "hub" in source:
        prefetch.fetch_hub(
            source["hub"], source["revision"], tmp, "model", allow_patterns=source.get("files")
        )
    elif "path" in source:
        prefetch.copy_local(Path(source["path"]), tmp)
    else:
        settings = {k: v for k, v in source["tiny"].items() if k != "corpus"}
        try:
            tiny.build(tmp, [Path(p) for p in corpus], **settings)
        except records.RecordError as error:
            # The corpus is the user's own file (a local dataset source): name it.
            shutil.rmtree(tmp, ignore_errors=True)
            records.exit_with(f"[ftflow] invalid data in the tiny model's corpus: {error}")
    if spec.get("chat_template"):
        # The configured template replaces the tokenizer's own; every later step
        # (tokenising, the cache key, training, generation) reads it from here.
        shutil.copyfile(spec["chat_template"], tmp / "chat_template.jinja")
    tmp.rename(out)
    print(f"model ready in {out}", file=sys.stderr)


if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    main(
        snakemake.params.spec,  # noqa: F821
        Path(snakemake.output.model),  # noqa: F821
        [p for p in snakemake.input if p.endswith(".jsonl")],  # noqa: F821
    )
