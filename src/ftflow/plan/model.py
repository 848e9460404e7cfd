"""Plan types, resource reading and :func:`plan_jobs` (no Snakemake import)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftflow import paths
from ftflow.config.resolve import derive_batch, named_stage_method
from ftflow.plan import disk as diskmod

PLAN_CSV = paths.RESULTS / "plan" / "plan.csv"
COST_KEY = "plan_cost_per_gpu_hour"
QUOTA_KEY = "plan_disk_quota_gb"
TRAINING_RULES = frozenset({"train"})  # resources from config["methods"][m]["resources"]
SKIPPED_RULES = frozenset({"plan"})  # the plan never plans itself
RUN_WILDCARDS = ("model", "method", "dataset", "seed")
MAX_JOB_LINES = 60  # terminal: list single jobs up to this many, summaries always

CSV_COLUMNS = (
    "row",
    "rule",
    "run",
    "model",
    "method",
    "dataset",
    "seed",
    "status",
    "nodes",
    "gpus_per_node",
    "gpus",
    "runtime_min",
    "retry_runtime_min",
    "batch",
    "gpu_hours",
    "cost",
    "disk_gb",
    "jobs_to_run",
    "jobs_done",
    "reason",
)


class PlanError(RuntimeError):
    """The workflow could not be planned (invalid config, missing input, …)."""


@dataclass(frozen=True)
class DagJob:
    """What Snakemake says about one job of the DAG (plain data, no Snakemake objects)."""

    rule: str
    wildcards: Mapping[str, str]
    needrun: bool
    resources: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class PlannedJob:
    rule: str
    wildcards: Mapping[str, str]
    status: str  # "run" | "done"
    nodes: int
    gpus_per_node: int
    runtime_min: int | None
    retry_runtime_min: int | None = None
    reason: str = ""
    batch: str = ""  # a training job's per-device × accumulation × processes = global
    disk: diskmod.DiskEstimate | None = None  # a training or sanity job's checkpoints + final

    @property
    def run(self) -> str:
        """The run identity: ``model/method/dataset/seed<seed>``, else the wildcard values."""
        w = self.wildcards
        if all(k in w for k in RUN_WILDCARDS):
            run = str(paths.Run(w["model"], w["method"], w["dataset"], int(w["seed"])))
            return f"{run} [{w['stage']}]" if "stage" in w else run
        return "/".join(str(v) for v in w.values()) or "-"

    @property
    def model(self) -> str:
        return str(self.wildcards.get("model", ""))

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def counted(self) -> bool:
        return self.status == "run"

    @property
    def disk_bytes(self) -> int | None:
        """The job's disk when known (done or not: a finished run holds its disk too)."""
        return None if self.disk is None else self.disk.total

    @property
    def gpu_hours(self) -> float:
        """Reserved GPU-hours of the first attempt; 0 for a done job."""
        if not self.counted or not self.runtime_min:
            return 0.0
        return self.gpus * self.runtime_min / 60


@dataclass(frozen=True)
class Total:
    key: str
    jobs_to_run: int
    jobs_done: int
    gpu_hours: float
    disk_bytes: int = 0  # of the jobs whose disk is known


@dataclass(frozen=True)
class Projection:
    """A full run's time and GPU-hours projected from one finished stage's throughput."""

    run: str
    stage: str
    healthy: bool
    tokens_per_second: float
    hours: float
    gpu_hours: float


@dataclass
class Plan:
    jobs: list[PlannedJob]
    cost_per_gpu_hour: float | None = None
    projections: list[Projection] = field(default_factory=list)
    disk_quota_gb: float | None = None

    @property
    def disk_bytes(self) -> int:
        """The estimated disk of every training and sanity job whose model size is known."""
        return sum(j.disk_bytes or 0 for j in self.jobs)

    def disk_unknown(self) -> list[PlannedJob]:
        """Training and sanity jobs whose disk is unknown (their model is not prefetched)."""
        return [j for j in self.jobs if j.disk is not None and j.disk.total is None]

    def disk_warning(self) -> str | None:
        """A sentence when the estimate exceeds ``plan_disk_quota_gb``; else None."""
        if self.disk_quota_gb is None or self.disk_bytes <= self.disk_quota_gb * diskmod.GB:
            return None
        return (
            f"WARNING: the runs' checkpoints and final models take an estimated "
            f"{diskmod.human(self.disk_bytes)}, over the quota of {self.disk_quota_gb:g} GB "
            f"({QUOTA_KEY}): lower methods.<m>.save_total_limit, save less often, or free space"
        )

    @property
    def gpu_hours(self) -> float:
        return sum(j.gpu_hours for j in self.jobs)

    @property
    def cost(self) -> float | None:
        return self.cost_of(self.gpu_hours)

    def cost_of(self, gpu_hours: float) -> float | None:
        if self.cost_per_gpu_hour is None:
            return None
        return gpu_hours * self.cost_per_gpu_hour

    def _totals(self, key) -> list[Total]:
        groups: dict[str, list[PlannedJob]] = {}
        for job in self.jobs:
            groups.setdefault(key(job), []).append(job)
        return [
            Total(
                name,
                sum(j.counted for j in jobs),
                sum(not j.counted for j in jobs),
                sum(j.gpu_hours for j in jobs),
                sum(j.disk_bytes or 0 for j in jobs),
            )
            for name, jobs in groups.items()
        ]

    def by_rule(self) -> list[Total]:
        """Per rule, in pipeline order (the order the jobs are listed)."""
        return self._totals(lambda j: j.rule)

    def by_model(self) -> list[Total]:
        """Per model; jobs without a model (datasets, the report) under ``-``."""
        return sorted(self._totals(lambda j: j.model or "-"), key=lambda t: (t.key == "-", t.key))

    def total(self) -> Total:
        return Total(
            "total",
            sum(j.counted for j in self.jobs),
            sum(not j.counted for j in self.jobs),
            self.gpu_hours,
            self.disk_bytes,
        )


# ------------------------------------------------------------------------- resources


def _int(value: Any, default: int | None = 0) -> int | None:
    if value is None or isinstance(value, bool):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return default


def _gres_gpus(gres: Any) -> int:
    """GPUs per node from a SLURM gres string: ``gpu:4`` or ``gpu:a100:4`` (``gpu`` = 1)."""
    for part in str(gres or "").split(","):
        spec = part.strip().split(":")
        if spec[0] == "gpu":
            return _int(spec[-1], 1) if len(spec) > 1 else 1
    return 0


def declared_resources(resources: Mapping[str, Any]) -> tuple[int, int, int | None]:
    """(nodes, GPUs per node, runtime minutes) of a rule's evaluated resources."""
    nodes = max(_int(resources.get("nodes"), 1) or 1, 1)
    total_gpus = _int(resources.get("gpu"), 0) or 0  # SLURM --gpus: the whole job
    per_node = math.ceil(total_gpus / nodes) if total_gpus else _gres_gpus(resources.get("gres"))
    return nodes, per_node, _int(resources.get("runtime"), None)


def training_resources(
    method: Mapping[str, Any],
) -> tuple[int, int, int | None, int | None]:
    """(nodes, GPUs per node, runtime, retry runtime) of a method, schema defaults applied."""
    res = method.get("resources") or {}
    runtime = _int(res.get("runtime", 60), None)
    return (
        _int(res.get("nodes", 1), 1) or 1,
        _int(res.get("gpus_per_node", 0), 0) or 0,
        runtime,
        _int(res.get("retry_runtime", runtime), None),
    )


def plan_jobs(
    dag_jobs: Iterable[DagJob],
    config: Mapping[str, Any],
    cost: float | None = None,
    *,
    root: Path | None = None,
    disk_quota_gb: float | None = None,
) -> Plan:
    """Turn the DAG's jobs into a plan: resources, status, disk and totals.

    ``root`` is the workflow's working directory, where prefetched models are looked up
    (default: the current directory).
    """
    methods = config.get("methods") or {}
    shapes: dict[str, diskmod.ModelShape | str] = {}
    planned = []
    for job in dag_jobs:
        if job.rule in SKIPPED_RULES:
            continue
        retry = None
        method = methods.get(job.wildcards.get("method", ""))
        if method is not None and job.rule == "sanity":
            method = named_stage_method(method, job.wildcards["stage"])
        if job.rule in TRAINING_RULES and method is not None:
            nodes, per_node, runtime, retry = training_resources(method)
        else:
            nodes, per_node, runtime = declared_resources(job.resources)
        batch = ""
        if job.rule in (*TRAINING_RULES, "sanity") and method is not None:
            b = derive_batch(method)
            batch = (f"{b.per_device_batch_size}×{b.gradient_accumulation_steps}×"
                     f"{b.processes}={b.global_batch_size}")  # fmt: skip
        disk = None
        if job.rule in (*TRAINING_RULES, "sanity") and method is not None:
            disk = _disk(job, method, config, shapes, Path(root or "."))
        planned.append(
            PlannedJob(
                rule=job.rule,
                wildcards=dict(job.wildcards),
                status="run" if job.needrun else "done",
                nodes=nodes,
                gpus_per_node=per_node,
                runtime_min=runtime,
                retry_runtime_min=retry,
                reason=job.reason if job.needrun else "",
                batch=batch,
                disk=disk,
            )
        )
    if cost is None:
        cost = config.get(COST_KEY)
    if disk_quota_gb is None:
        disk_quota_gb = config.get(QUOTA_KEY)
    return Plan(
        planned,
        None if cost is None else float(cost),
        _projections(planned),
        None if disk_quota_gb is None else float(disk_quota_gb),
    )


def _disk(job: DagJob, method, config, shapes: dict, root: Path) -> diskmod.DiskEstimate:
    """A training (or sanity) job's disk; unknown, saying why, when its model's size is."""
    name = job.wildcards["model"]
    model = (config.get("models") or {}).get(name) or {}
    if name not in shapes:
        try:
            shapes[name] = diskmod.model_shape(name, model, root)
        except Exception as error:  # a config transformers cannot build: say so, plan on
            shapes[name] = f"model {name}: its size could not be read ({error})"
    shape = shapes[name]
    if isinstance(shape, str):
        return diskmod.DiskEstimate(unknown=shape)
    return diskmod.estimate(method, model, shape, exports=job.rule in TRAINING_RULES)


def _projections(jobs: list[PlannedJob]) -> list[Projection]:
    """What the stages that have run measured (their verdicts), for the full runs."""
    import json
    from pathlib import Path

    found = []
    for job in jobs:
        if job.rule != "sanity":
            continue
        verdict = Path(paths.SANITY_VERDICT.format(**job.wildcards))
        if not verdict.exists():
            continue
        v = json.loads(verdict.read_text())
        if v.get("projected_full_gpu_hours") is None:
            continue
        w = job.wildcards
        run = paths.Run(w["model"], w["method"], w["dataset"], int(w["seed"]))
        found.append(
            Projection(str(run), v["stage"], v["healthy"], v["tokens_per_second"],
                       v["projected_full_hours"], v["projected_full_gpu_hours"])
        )  # fmt: skip
    return found
