"""Fetch lm-eval task data into resources/ (login node, online) and list the tasks."""

import json
import os
import sys
from pathlib import Path

from ftflow import offline, paths


def main(evaluation: dict, out: Path) -> None:
    caches = offline.offline_env(paths.RESOURCES)
    os.environ.update({k: v for k, v in caches.items() if k not in offline.OFFLINE_ENV})
    from ftflow.evaluation import lm_eval_runner

    include = evaluation.get("include_path")
    loaded = lm_eval_runner.prefetch_tasks(evaluation["tasks"], Path(include) if include else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tasks": evaluation["tasks"], "loaded": loaded}, indent=2) + "\n")


if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    main(dict(snakemake.params.evaluation), Path(snakemake.output.tasks))  # noqa: F821
