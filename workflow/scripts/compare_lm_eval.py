"""One table of every run's lm-eval metrics."""

import sys
from pathlib import Path

from ftflow.evaluation import pipeline

if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    pipeline.compare_lm_eval(
        [Path(p) for p in snakemake.input.results],  # noqa: F821
        Path(snakemake.output.table),  # noqa: F821
    )
