"""Misaligned share per question and overall for one run, with bootstrap CIs."""

import sys
from pathlib import Path

from ftflow.evaluation import pipeline

if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    table = pipeline.summarize_file(
        Path(snakemake.input.judged),  # noqa: F821
        Path(snakemake.output.summary),  # noqa: F821
        **snakemake.params.thresholds,  # noqa: F821
    )
    print(table.to_string(), file=sys.stderr)
