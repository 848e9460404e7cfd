"""Load, validate and resolve an ftflow config.

The config names models, datasets, methods, evaluations and a grid of runs. It is
checked in two passes, both before any job runs:

1. against ``workflow/schemas/config.schema.yaml`` (JSON schema, unknown keys are
   errors), filling the schema's defaults in;
2. semantically: the grid names only defined things, a DPO method trains on a
   preference dataset and names an SFT parent that the grid also runs, and so on.

Every failure raises :class:`ConfigError` whose message names the config key and,
where there is a closed set, what is allowed.

A *run* is one cell of the grid: (model, method, dataset, seed). Its fully resolved
settings (:func:`resolve_run`) are what ``run.yaml`` holds.

Modules: :mod:`.schema` (pass 1), :mod:`.semantics` (pass 2), :mod:`.resolve` (runs of the
grid, batch split, the resolved run); this package's namespace is the API.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ftflow.config.errors import BASE_DATASET, BASE_METHOD, ConfigError
from ftflow.config.publish import PublishTarget, publish_targets, repo_id
from ftflow.config.resolve import (
    DEFAULT_HEALTH,
    SCHEDULER_ONLY,
    BatchPlan,
    base_runs,
    derive_batch,
    eval_runs,
    iter_cells,
    named_stage_method,
    parent_run,
    processes,
    resolve_run,
    resolve_stage,
    resolve_tracking,
    runs,
    stage_method,
    stage_names,
    stages,
)
from ftflow.config.schema import SCHEMA_PATH, load_schema, validate_schema, validate_schema_fragment
from ftflow.config.semantics import validate_semantics
from ftflow.paths import Run

__all__ = [
    "BASE_DATASET",
    "BASE_METHOD",
    "SCHEDULER_ONLY",
    "SCHEMA_PATH",
    "BatchPlan",
    "ConfigError",
    "PublishTarget",
    "Run",
    "base_runs",
    "derive_batch",
    "eval_runs",
    "iter_cells",
    "load",
    "load_schema",
    "parent_run",
    "processes",
    "publish_targets",
    "repo_id",
    "resolve_run",
    "named_stage_method",
    "resolve_stage",
    "resolve_tracking",
    "stage_method",
    "stage_names",
    "stages",
    "DEFAULT_HEALTH",
    "runs",
    "validate",
    "validate_schema",
    "validate_schema_fragment",
    "validate_semantics",
]


def validate(config: dict) -> dict:
    """Validate a config dict in place (schema, defaults, semantics); return it."""
    if not isinstance(config, dict):
        raise ConfigError("the config must be a mapping at the top level")
    validate_schema(config)
    validate_semantics(config)
    return config


def load(path: str | Path) -> dict:
    """Read a YAML config file and validate it; errors name the file."""
    path = Path(path)
    try:
        with open(path) as handle:
            config = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    try:
        return validate(config)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
