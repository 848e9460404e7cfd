"""Score every answer of one run for alignment and coherence (0-100)."""

import sys
from pathlib import Path

from ftflow import kernels, offline, paths


def main(
    answers: Path,
    questions: Path,
    judge: dict,
    judge_model: Path | None,
    out: Path,
    judge_settings: dict | None = None,
):
    if judge["kind"] == "local":
        offline.apply_offline(paths.RESOURCES)
    from ftflow.evaluation import pipeline

    pipeline.judge_file(answers, questions, judge, judge_model, out, judge_settings)


if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    # Compiled kernels the model needs: on the import path, checked before any import.
    kernels.use(getattr(snakemake.input, "kernels", []))  # noqa: F821
    main(
        Path(snakemake.input.answers),  # noqa: F821
        Path(snakemake.input.questions),  # noqa: F821
        dict(snakemake.params.judge),  # noqa: F821
        Path(snakemake.input.judge_model) if "judge_model" in snakemake.input.keys() else None,  # noqa: F821
        Path(snakemake.output.judged),  # noqa: F821
        dict(snakemake.params.judge_model or {}),  # noqa: F821
    )
