"""Run lm-evaluation-harness offline on one run's model (or the base model)."""

import sys
from pathlib import Path

from ftflow import kernels, offline, paths

if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    # Compiled kernels the model needs: on the import path, checked before any import.
    kernels.use(getattr(snakemake.input, "kernels", []))  # noqa: F821
    offline.apply_offline(paths.RESOURCES)
    from ftflow.evaluation import lm_eval_runner

    evaluation = snakemake.params.evaluation  # noqa: F821
    final = snakemake.input.final  # noqa: F821
    include = evaluation.get("include_path")
    lm_eval_runner.run_lm_eval(
        Path(snakemake.input.model),  # noqa: F821
        Path(final) if final else None,
        list(evaluation["tasks"]),
        Path(include) if include else None,
        Path(snakemake.output.results),  # noqa: F821
        batch_size=evaluation["batch_size"],
        limit=evaluation.get("limit"),
        seed=evaluation["seed"] + int(snakemake.wildcards.seed),  # noqa: F821
        num_fewshot=evaluation.get("num_fewshot"),
        dtype=snakemake.params.model["dtype"],  # noqa: F821
        trust_remote_code=snakemake.params.model["trust_remote_code"],  # noqa: F821
    )
