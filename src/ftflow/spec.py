"""The typed run spec: a run's ``run.yaml`` parsed once, read by attribute.

``run.yaml`` is rendered by the ``configure_run`` rule from :func:`ftflow.config.resolve_run`
and never edited. Every job that trains reads it through :func:`load`; the raw mapping stays
available as :attr:`RunSpec.raw` for what hashes the whole config (the checkpoint
fingerprint) and for a backend's own method block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ftflow.paths import Run, RunPaths


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: str
    dtype: str
    attn_implementation: str
    trust_remote_code: bool
    source: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None


@dataclass(frozen=True)
class BatchSpec:
    """per_device × accumulation × processes = global (derived, never hand-set)."""

    global_batch_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    processes: int


@dataclass(frozen=True)
class MethodSpec:
    name: str
    kind: str  # sft | lora | dpo
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    epochs: float
    max_steps: int | None
    optimizer: str
    gradient_checkpointing: bool
    save_steps: int
    save_total_limit: int
    logging_steps: int
    distributed: str
    min_lr_rate: float | None = None
    lora: dict[str, Any] | None = None
    deepspeed: dict[str, Any] | None = None
    beta: float | None = None
    loss_type: str | None = None
    precompute_ref_log_probs: bool = False  # dpo (a run.yaml from before it: the old path)
    resources: dict[str, Any] = field(default_factory=dict)
    max_minutes: float | None = None  # a sanity stage's time budget (TRL)
    packing: str = "none"  # none | padding_free | bfd (TRL, sft and lora)
    liger_kernel: bool = False  # Liger's Triton kernels (TRL, CUDA GPUs)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str
    max_length: int


@dataclass(frozen=True)
class RunSpec:
    run: Run
    model: ModelSpec
    dataset: DatasetSpec
    method: MethodSpec
    batch: BatchSpec
    parent: Run | None
    raw: dict[str, Any]
    stage: str | None = None  # a sanity stage of the run (ftflow.health), else the run

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.run, self.stage)

    @property
    def parent_paths(self) -> RunPaths | None:
        return RunPaths(self.parent) if self.parent else None


def _run(block: dict) -> Run:
    return Run(block["model"], block["method"], block["dataset"], int(block["seed"]))


def _fields(cls, block: dict, **extra) -> Any:
    names = cls.__dataclass_fields__
    return cls(**{k: v for k, v in block.items() if k in names}, **extra)


def from_dict(raw: dict) -> RunSpec:
    """A :class:`RunSpec` from the resolved mapping (what ``run.yaml`` holds)."""
    run = _run(raw["run"])
    method = {"max_steps": None, **raw["method"]}
    return RunSpec(
        run=run,
        model=_fields(ModelSpec, raw["model"], name=run.model),
        dataset=_fields(DatasetSpec, raw["dataset"], name=run.dataset),
        method=_fields(MethodSpec, method, name=run.method),
        batch=_fields(BatchSpec, raw["batch"]),
        parent=_run(raw["parent"]) if "parent" in raw else None,
        raw=raw,
        stage=(raw.get("stage") or {}).get("name"),
    )


def load(run_config: str | Path) -> RunSpec:
    """Parse a run's ``run.yaml``."""
    return from_dict(yaml.safe_load(Path(run_config).read_text()))
