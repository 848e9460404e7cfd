"""Tabulate and draw the sanity stages of every staged run."""

import sys
from pathlib import Path

from ftflow import report

if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    verdicts = [Path(p) for p in snakemake.input.verdicts]  # noqa: F821
    report.write_csv(report.stages_table(verdicts), Path(snakemake.output.table))  # noqa: F821
    report.stages_figure(verdicts, Path(snakemake.output.figure))  # noqa: F821
