"""Sample answers to every evaluation question from one run's model (or the base model)."""

import sys
from pathlib import Path

from ftflow import kernels, offline, paths

if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    # Compiled kernels the model needs: on the import path, checked before any import.
    kernels.use(getattr(snakemake.input, "kernels", []))  # noqa: F821
    offline.apply_offline(paths.RESOURCES)
    from ftflow.evaluation import generate

    evaluation = snakemake.params.evaluation  # noqa: F821
    final = snakemake.input.final  # noqa: F821
    generate.main(
        model_dir=Path(snakemake.input.model),  # noqa: F821
        final=Path(final) if final else None,
        questions_file=Path(snakemake.input.questions),  # noqa: F821
        out=Path(snakemake.output.answers),  # noqa: F821
        seed=evaluation["seed"] + int(snakemake.wildcards.seed),  # noqa: F821
        max_new_tokens=evaluation["max_new_tokens"],
        batch_size=evaluation["batch_size"],
        samples_override=evaluation.get("samples_per_paraphrase"),
        dtype=snakemake.params.model["dtype"],  # noqa: F821
        trust_remote_code=snakemake.params.model["trust_remote_code"],  # noqa: F821
    )
