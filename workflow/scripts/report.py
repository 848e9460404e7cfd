"""Aggregate every run's metrics into runs.csv and draw one loss figure per cell."""

import sys
from pathlib import Path

from ftflow import report


def main(metrics: list[Path], runs_csv: Path, figures: list[Path]) -> None:
    table = report.runs_table(metrics)
    report.write_csv(table, runs_csv)
    report.loss_figures(metrics, figures)


if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    main(
        [Path(p) for p in snakemake.input.metrics],  # noqa: F821
        Path(snakemake.output.runs),  # noqa: F821
        [Path(p) for p in snakemake.output.loss],  # noqa: F821
    )
