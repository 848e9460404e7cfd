# Config validation, wildcard constraints and every input function.

import re
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from ftflow import config as ftconfig  # noqa: E402
from ftflow import launch, paths  # noqa: E402

# Friendly errors first (key path + allowed values), then snakemake's own pass.
try:
    ftconfig.validate(config)
except ftconfig.ConfigError as error:
    raise ValueError(f"invalid config: {error}") from None
validate(config, "../schemas/config.schema.yaml")

RUNS = ftconfig.runs(config)
CELLS = list(ftconfig.iter_cells(config))


def _alternatives(names):
    return "|".join(sorted(re.escape(str(n)) for n in names))


wildcard_constraints:
    model=_alternatives(config["models"]),
    method=_alternatives(config["methods"]),
    dataset=_alternatives(config["datasets"]),
    seed=r"\d+",


def _run(wildcards):
    return ftconfig.Run(
        wildcards.model, wildcards.method, wildcards.dataset, int(wildcards.seed)
    )


def _method(wildcards):
    return config["methods"][wildcards.method]


def get_model_source(wildcards):
    """Local files a model is built or copied from (so edits trigger a rebuild)."""
    model = config["models"][wildcards.model]
    source = model["source"]
    files = [model["chat_template"]] if model.get("chat_template") else []
    if "path" in source:
        files.append(source["path"])
    if "tiny" in source:
        files += [
            config["datasets"][d]["source"]["path"] for d in source["tiny"]["corpus"]
        ]
    return files


def get_dataset_source(wildcards):
    source = config["datasets"][wildcards.dataset]["source"]
    return [source["path"]] if "path" in source else []


def get_prepare_settings(wildcards):
    dataset = config["datasets"][wildcards.dataset]
    return {k: dataset[k] for k in ("format", "fraction", "sample_seed", "max_length")}


def get_resolved_run(wildcards):
    return ftconfig.resolve_run(config, _run(wildcards))


def get_parent_final(wildcards):
    parent = ftconfig.parent_run(config, _run(wildcards))
    if parent is None:
        return []
    return str(
        paths.final_dir(parent.model, parent.method, parent.dataset, parent.seed)
    )


def get_launcher(wildcards):
    return launch.launch_command(_method(wildcards))


def get_train_threads(wildcards):
    return launch.slurm_resources(_method(wildcards))["cpus_per_task"]


def get_train_resource(name, default=None):
    """An input function for one training resource (see ftflow.launch.slurm_resources)."""

    def resource(wildcards):
        return launch.slurm_resources(_method(wildcards)).get(name, default)

    return resource


def get_train_runtime(wildcards, attempt):
    """Minutes; later attempts (after a time-limit kill) may ask for more."""
    res = _method(wildcards)["resources"]
    return res["runtime"] if attempt == 1 else res.get("retry_runtime", res["runtime"])


def run_targets(pattern):
    return [pattern.format(**run.wildcards) for run in RUNS]
