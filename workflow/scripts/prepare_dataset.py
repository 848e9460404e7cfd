"""Validate, sample, tokenise and cache one dataset for one model."""

import json
import sys
from pathlib import Path

from ftflow import offline, paths, records


def main(
    raw: Path, model_dir: Path, manifest: Path, settings: dict, source: dict | None = None
) -> dict:
    """Raises SystemExit(1) with one line naming the user's file and line on a bad record."""
    offline.apply_offline(paths.RESOURCES)
    from ftflow import prepare

    try:
        info = prepare.prepare(
            raw,
            model_dir,
            manifest,
            Path(paths.CACHE_ENTRY).parent,
            prepare.Settings(**settings),
        )
    except records.RecordError as error:
        records.exit_with(f"[ftflow] invalid data: {records.user_message(error, source)}")
    print(json.dumps(info, indent=2), file=sys.stderr)
    return info


if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    main(
        Path(snakemake.input.raw),  # noqa: F821
        Path(snakemake.input.model),  # noqa: F821
        Path(snakemake.output.manifest),  # noqa: F821
        dict(snakemake.params.settings),  # noqa: F821
        dict(snakemake.params.source),  # noqa: F821
    )
