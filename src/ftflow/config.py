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
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ftflow.paths import Run  # noqa: F401  (re-exported: config.Run)

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
# The schema ships inside the repository; an installed copy of the package finds it
# through FTFLOW_ROOT or the working directory instead.
BASE_METHOD = "base"  # the untrained model's evaluation row: results/{model}/base/none/…
BASE_DATASET = "none"


SCHEDULER_ONLY = ("runtime", "retry_runtime", "mem_mb", "constraint", "cpus_per_task")


class ConfigError(ValueError):
    """A config that cannot run, with the key to fix in the message."""


# --------------------------------------------------------------------------- schema


def load_schema(path: Path | None = None) -> dict:
    """The schema, a fresh copy each call (parsed once per file version)."""
    path = Path(path or _schema_path()).resolve()
    stat = path.stat()
    return copy.deepcopy(_parse_schema(str(path), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=8)
def _parse_schema(path: str, mtime_ns: int, size: int) -> dict:
    with open(path) as handle:
        return yaml.safe_load(handle)


def _schema_path() -> Path:
    if SCHEMA_PATH.exists():
        return SCHEMA_PATH
    candidate = Path.cwd() / "workflow" / "schemas" / "config.schema.yaml"
    if candidate.exists():
        return candidate
    raise FileNotFoundError(f"config schema not found at {SCHEMA_PATH} or {candidate}")


def _key_path(parts: Any) -> str:
    return (
        ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts).replace(".[", "[")
        or "(top level)"
    )


def _describe(error: jsonschema.ValidationError) -> str:
    """Turn a jsonschema error into 'config key X: problem (allowed: ...)'."""
    where = _key_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        keys = ", ".join(f"{where}.{k}" if where != "(top level)" else k for k in extra)
        return f"unknown config key {keys} (allowed here: {', '.join(allowed)})"
    if error.validator == "enum":
        return (
            f"config key {where}: {error.instance!r} is not allowed (allowed: "
            + ", ".join(map(str, error.validator_value))
            + ")"
        )
    if error.validator == "required":
        return f"config key {where}: {error.message}"
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        shapes = []
        for option in error.validator_value:
            option = _resolve_ref(option, error)
            shapes.append("{" + ", ".join(option.get("required", [])) + "}")
        return (
            f"config key {where}: {sorted(error.instance)} does not match any allowed form "
            f"(allowed: one of {' | '.join(shapes)})"
        )
    if error.validator == "pattern":
        hint = schema.get("description", f"pattern {error.validator_value}")
        return f"config key {where}: {error.instance!r} is not valid ({hint})"
    if error.validator == "propertyNames":
        return f"config key {where}: name {error.instance!r} is not valid ({error.message})"
    return f"config key {where}: {error.message}"


def _resolve_ref(option: dict, error: jsonschema.ValidationError) -> dict:
    ref = option.get("$ref")
    if not ref:
        return option
    node: Any = load_schema()
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _with_defaults(validator_class: type) -> type:
    """A validator that fills in ``default`` values while validating (as snakemake does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate_schema(config: dict, schema: dict | None = None) -> dict:
    """Validate against the JSON schema, fill defaults; return the (mutated) config."""
    schema = schema or load_schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_describe(best))
    _with_defaults(jsonschema.Draft202012Validator)(schema).validate(config)
    return config


# ------------------------------------------------------------------- semantic checks


def _check_names(kind: str, names: list[str], defined: Mapping, where: str) -> None:
    for name in names:
        if name not in defined:
            raise ConfigError(
                f"config key {where}: {kind} {name!r} is not defined "
                f"(defined {kind}s: {', '.join(sorted(defined)) or 'none'})"
            )


def validate_semantics(config: dict) -> None:
    models, datasets, methods = config["models"], config["datasets"], config["methods"]
    if BASE_METHOD in methods:
        raise ConfigError(
            f"config key methods.{BASE_METHOD}: the name {BASE_METHOD!r} is reserved for "
            "the untrained base model's evaluation row"
        )
    if BASE_DATASET in datasets:
        raise ConfigError(
            f"config key datasets.{BASE_DATASET}: the name {BASE_DATASET!r} is reserved for "
            "the base model's evaluation row"
        )
    _validate_evaluations(config)
    for name, model in models.items():
        tiny = model["source"].get("tiny")
        if tiny:
            _check_names("dataset", tiny["corpus"], datasets, f"models.{name}.source.tiny.corpus")
            for corpus in tiny["corpus"]:
                if "path" not in datasets[corpus]["source"]:
                    raise ConfigError(
                        f"config key models.{name}.source.tiny.corpus: dataset {corpus!r} must "
                        "be a local path (the tokenizer is trained before anything is fetched)"
                    )
        if model["backend"] != "trl":
            raise ConfigError(
                f"config key models.{name}.backend: {model['backend']!r} is not runnable yet "
                "(allowed now: trl)"
            )
    for name, method in methods.items():
        where = f"methods.{name}"
        kind = method["kind"]
        if kind == "dpo" and "parent" not in method:
            raise ConfigError(f"config key {where}.parent: a dpo method must name its SFT parent")
        if kind != "dpo" and "parent" in method:
            raise ConfigError(f"config key {where}.parent: only a dpo method has a parent")
        if kind == "lora":
            method["lora"] = validate_schema_fragment(method.get("lora", {}), "lora")
        elif "lora" in method:
            raise ConfigError(f"config key {where}.lora: only a lora method takes lora settings")
        if method["lr_scheduler"] == "cosine_with_min_lr" and "min_lr_rate" not in method:
            raise ConfigError(f"config key {where}.min_lr_rate: required by cosine_with_min_lr")
        if "min_lr_rate" in method and method["lr_scheduler"] != "cosine_with_min_lr":
            raise ConfigError(
                f"config key {where}.min_lr_rate: only used with lr_scheduler cosine_with_min_lr"
            )
        if method["optimizer"] in ("adamw_8bit", "paged_adamw_8bit") and method["distributed"] in (
            "deepspeed_zero3",
            "fsdp",
        ):
            raise ConfigError(
                f"config key {where}.optimizer: {method['optimizer']} cannot be combined with "
                f"distributed {method['distributed']} (sharded optimizer states; "
                "allowed with it: adamw_torch, adamw_torch_fused)"
            )
        if kind == "dpo":
            parent = method["parent"]
            _check_names("method", [parent["method"]], methods, f"{where}.parent.method")
            _check_names("dataset", [parent["dataset"]], datasets, f"{where}.parent.dataset")
            if methods[parent["method"]]["kind"] != "sft":
                raise ConfigError(
                    f"config key {where}.parent.method: {parent['method']!r} is a "
                    f"{methods[parent['method']]['kind']} method (allowed: an sft method)"
                )
        derive_batch(method)  # raises when the global batch cannot be split

    planned = set()
    for i, block in enumerate(config["grid"]):
        where = f"grid[{i}]"
        _check_names("model", block["models"], models, f"{where}.models")
        _check_names("method", block["methods"], methods, f"{where}.methods")
        _check_names("dataset", block["datasets"], datasets, f"{where}.datasets")
        for method_name, dataset_name in itertools.product(block["methods"], block["datasets"]):
            want = "preference" if methods[method_name]["kind"] == "dpo" else "chat"
            have = datasets[dataset_name]["format"]
            if want != have:
                raise ConfigError(
                    f"config key {where}: method {method_name!r} ({methods[method_name]['kind']}) "
                    f"needs a {want} dataset, but dataset {dataset_name!r} is {have} "
                    f"(allowed {want} datasets: "
                    + ", ".join(sorted(n for n, d in datasets.items() if d["format"] == want))
                    + ")"
                )
        planned.update(
            itertools.product(block["models"], block["methods"], block["datasets"], block["seeds"])
        )
    for model, method, _dataset, seed in sorted(planned):
        spec = methods[method]
        if spec["kind"] == "dpo":
            parent = (model, spec["parent"]["method"], spec["parent"]["dataset"], seed)
            if parent not in planned:
                raise ConfigError(
                    f"config key methods.{method}.parent: the grid runs {method} for "
                    f"{model} seed {seed}, but not its parent run "
                    f"{model}/{parent[1]}/{parent[2]}/seed{seed} — add it to the grid"
                )


def _validate_evaluations(config: dict) -> None:
    for name, ev in config.get("evaluations", {}).items():
        where = f"evaluations.{name}"
        if ev["kind"] == "questions":
            for key in ("questions", "judge"):
                if key not in ev:
                    raise ConfigError(f"config key {where}.{key}: required for kind questions")
            judge = ev["judge"]
            if judge["kind"] == "local":
                if judge.get("model") not in config["models"]:
                    raise ConfigError(
                        f"config key {where}.judge.model: a local judge names one of the "
                        f"models (allowed: {', '.join(sorted(config['models']))})"
                    )
            else:
                for key in ("base_url", "model"):
                    if key not in judge:
                        raise ConfigError(
                            f"config key {where}.judge.{key}: required by an api judge"
                        )
        elif not ev.get("tasks"):
            raise ConfigError(f"config key {where}.tasks: an lm_eval evaluation names its tasks")


def validate_schema_fragment(value: dict, name: str) -> dict:
    """Fill the defaults of one named method sub-object (e.g. ``lora``)."""
    schema = load_schema()
    fragment = schema["properties"]["methods"]["additionalProperties"]["properties"][name]
    _with_defaults(jsonschema.Draft202012Validator)(fragment).validate(value)
    return value


# ----------------------------------------------------------------------------- API


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


def runs(config: Mapping) -> list[Run]:
    """Every run of the grid, sorted, each once."""
    cells = set()
    for block in config["grid"]:
        for model, method, dataset, seed in itertools.product(
            block["models"], block["methods"], block["datasets"], block["seeds"]
        ):
            cells.add(Run(model, method, dataset, int(seed)))
    return sorted(cells)


def iter_cells(config: Mapping) -> Iterator[tuple[str, str, str]]:
    """Grid cells without the seed: what the report draws one figure for."""
    yield from sorted({(r.model, r.method, r.dataset) for r in runs(config)})


def base_runs(config: Mapping) -> list[Run]:
    """The base-model evaluation rows: each model of the grid, for each of its seeds."""
    rows = set()
    for block in config["grid"]:
        for model, seed in itertools.product(block["models"], block["seeds"]):
            rows.add(Run(model, BASE_METHOD, BASE_DATASET, int(seed)))
    return sorted(rows)


def eval_runs(config: Mapping) -> list[Run]:
    """Everything an evaluation runs on: every run of the grid plus the base rows."""
    return base_runs(config) + runs(config) if config.get("evaluations") else []


def parent_run(config: Mapping, run: Run) -> Run | None:
    method = config["methods"][run.method]
    if method["kind"] != "dpo":
        return None
    return Run(run.model, method["parent"]["method"], method["parent"]["dataset"], run.seed)


# ------------------------------------------------------------------- derived values


@dataclass(frozen=True)
class BatchPlan:
    """How a global batch is split: per_device × accumulation × processes = global."""

    global_batch_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    processes: int


def processes(method: Mapping) -> int:
    res = method.get("resources") or {}
    nodes = res.get("nodes", 1)
    gpus = res.get("gpus_per_node", 0)
    return nodes * gpus if gpus else nodes * res.get("cpu_processes", 1)


def derive_batch(method: Mapping, n_processes: int | None = None) -> BatchPlan:
    """Derive gradient accumulation from the global batch; refuse what does not divide."""
    n_processes = n_processes or processes(method)
    global_batch = method["global_batch_size"]
    per_device = min(method.get("per_device_batch_size", 1), max(global_batch // n_processes, 1))
    per_step = per_device * n_processes
    if global_batch % per_step:
        raise ConfigError(
            f"config key global_batch_size: {global_batch} cannot be split over "
            f"{n_processes} process(es) × per_device_batch_size {per_device} "
            f"(allowed: a multiple of {per_step})"
        )
    return BatchPlan(global_batch, per_device, global_batch // per_step, n_processes)


def resolve_run(config: Mapping, run: Run) -> dict:
    """The fully resolved settings of one run — exactly what run.yaml holds.

    Only what this run depends on goes in, so adding a seed or another method to the
    grid leaves every other run's ``run.yaml`` (and so its rerun triggers) unchanged.
    """
    method = copy.deepcopy(config["methods"][run.method])
    # Scheduler-only settings (time, memory, constraint, CPUs) do not change what is
    # trained; leaving them out means raising a time limit does not retrain finished runs.
    # The process layout does change the batch split, and stays (in `batch`).
    for key in SCHEDULER_ONLY:
        method.get("resources", {}).pop(key, None)
    dataset = copy.deepcopy(config["datasets"][run.dataset])
    model = copy.deepcopy(config["models"][run.model])
    batch = derive_batch(method)
    resolved = {
        "run": {
            "model": run.model,
            "method": run.method,
            "dataset": run.dataset,
            "seed": run.seed,
        },
        "model": model,
        "dataset": dataset,
        "method": method,
        "batch": {
            "global_batch_size": batch.global_batch_size,
            "per_device_batch_size": batch.per_device_batch_size,
            "gradient_accumulation_steps": batch.gradient_accumulation_steps,
            "processes": batch.processes,
        },
    }
    parent = parent_run(config, run)
    if parent:
        resolved["parent"] = {
            "model": parent.model,
            "method": parent.method,
            "dataset": parent.dataset,
            "seed": parent.seed,
        }
    return resolved
