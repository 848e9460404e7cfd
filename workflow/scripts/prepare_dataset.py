"""Validate, sample, tokenise and cache one dataset for one model."""

import json
import sys
from pathlib import Path

from ftflow import offline, paths


def main(raw: Path, model_dir: Path, manifest: Path, settings: dict) -> dict:
    offline.apply_offline(paths.RESOURCES)
    from ftflow import prepare

    info = prepare.prepare(
        raw,
        model_dir,
        manifest,
        Path(paths.CACHE_ENTRY).parent,
        prepare.Settings(**settings),
    )
    print(json.dumps(info, indent=2), file=sys.stderr)
    return info


if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    main(
        Path(snakemake.input.raw),  # noqa: F821
        Path(snakemake.input.model),  # noqa: F821
        Path(snakemake.output.manifest),  # noqa: F821
        dict(snakemake.params.settings),  # noqa: F821
    )
