"""Render a run's fully resolved config to run.yaml (never edited in place)."""

import os
import sys
from pathlib import Path

import yaml


def main(resolved: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".yaml.tmp")
    header = "# Rendered by ftflow from the workflow config; edit the config, not this file.\n"
    tmp.write_text(header + yaml.safe_dump(resolved, sort_keys=False))
    os.replace(tmp, out)


if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    main(dict(snakemake.params.resolved), Path(snakemake.output.run_config))  # noqa: F821
