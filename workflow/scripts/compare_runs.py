"""Every run and base row side by side: misaligned share per cell, CIs over seeds."""

import sys
from pathlib import Path

from ftflow.evaluation import pipeline

if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    pipeline.compare(
        [Path(p) for p in snakemake.input.summaries],  # noqa: F821
        Path(snakemake.output.table),  # noqa: F821
        Path(snakemake.output.by_question),  # noqa: F821
        Path(snakemake.output.figure),  # noqa: F821
    )
