"""The grid's runs and each run's fully resolved settings (what run.yaml holds)."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from ftflow.config.errors import BASE_DATASET, BASE_METHOD, ConfigError
from ftflow.paths import Run

SCHEDULER_ONLY = (
    "runtime",
    "retry_runtime",
    "mem_mb",
    "constraint",
    "cpus_per_task",
    "signal_lead",
)
#: Tracking settings only the login node's sync_tracking reads: not part of a run.
SYNC_ONLY = ("sync_retries", "sync_retry_delay", "sync_timeout")


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


#: What a stage sets over its method; everything else (learning rate, schedule, the
#: global batch, LoRA, DPO settings) is the method's.
STAGE_KEYS = ("distributed", "optimizer", "per_device_batch_size", "max_steps", "max_minutes")
#: Method keys that say how the run is staged and gated, not what it trains.
STAGING_ONLY = ("stages", "accept_unhealthy")
#: Health thresholds of a stage when it sets none (seed 003's rules of thumb).
DEFAULT_HEALTH = {
    "window": 10,  # steps averaged at the start and at the end
    "loss_drop": 0.10,  # the loss falls by at least this share, first window to last
    "grad_norm_range": [0.1, 10.0],  # every logged grad-norm inside
    "grad_norm_growth": 10.0,  # last window's mean grad-norm ≤ this × the first window's
    "reward_accuracy": 0.5,  # DPO: last window's mean reward accuracy above chance
}


def stages(method: Mapping) -> list[dict]:
    return list(method.get("stages") or [])


def stage_names(method: Mapping) -> list[str]:
    return [stage["name"] for stage in stages(method)]


def stage_method(method: Mapping, stage: Mapping) -> dict:
    """The method as one of its stages trains it: the stage's resources, distributed,
    optimizer and length; the global batch (and all else) the method's."""
    out = {k: copy.deepcopy(v) for k, v in method.items() if k not in STAGING_ONLY}
    out.update({k: copy.deepcopy(stage[k]) for k in STAGE_KEYS if k in stage})
    out["resources"] = copy.deepcopy(stage.get("resources") or {})
    if out.get("distributed") != "deepspeed_zero3":
        out.pop("deepspeed", None)
    else:
        from ftflow.config.schema import validate_schema_fragment

        out["deepspeed"] = validate_schema_fragment(out.get("deepspeed") or {}, "deepspeed")
    if "max_steps" in out:
        out["save_steps"] = min(out.get("save_steps", out["max_steps"]), out["max_steps"])
    out["logging_steps"] = 1  # the verdict judges every step
    return out


def named_stage_method(method: Mapping, name: str) -> dict:
    """:func:`stage_method` of the method's stage called ``name``."""
    return stage_method(method, stages(method)[stage_names(method).index(name)])


def resolve_stage(config: Mapping, run: Run, name: str) -> dict:
    """A sanity stage's resolved settings: what ``sanity/<stage>/run.yaml`` holds."""
    method = config["methods"][run.method]
    index = stage_names(method).index(name)
    stage = stages(method)[index]
    resolved = _resolve(config, run, stage_method(method, stage))
    resolved["stage"] = {
        "name": name,
        "index": index,
        "health": {**DEFAULT_HEALTH, **(stage.get("health") or {})},
    }
    return resolved


def resolve_run(config: Mapping, run: Run) -> dict:
    """The fully resolved settings of one run — exactly what run.yaml holds.

    Only what this run depends on goes in, so adding a seed or another method to the
    grid leaves every other run's ``run.yaml`` (and so its rerun triggers) unchanged.
    """
    method = {
        k: copy.deepcopy(v) for k, v in config["methods"][run.method].items()
        if k not in STAGING_ONLY
    }  # fmt: skip
    return _resolve(config, run, method)


def _resolve(config: Mapping, run: Run, method: dict) -> dict:
    """``method``: a deep copy of the caller's own (resolve_run's, stage_method's), which
    the resolved dict takes over as it is (one copy per run: the DAG build resolves every run)."""
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


def resolve_tracking(config: Mapping) -> dict:
    """What a training job tracks to (TensorBoard, W&B): the config's ``tracking`` block
    less what only ``sync_tracking`` reads."""
    tracking = copy.deepcopy(dict(config.get("tracking") or {}))
    tracking.setdefault("tensorboard", True)
    if "wandb" in tracking:
        tracking["wandb"] = {k: v for k, v in tracking["wandb"].items() if k not in SYNC_ONLY}
    return tracking
