"""The backend contract: what a training backend must do, and nothing more.

In the spirit of torchtune's recipe interface, :class:`Backend` is a protocol, not a base
class: a backend shares no code through inheritance. What every backend shares — claiming
the checkpoints, choosing the resume point, finalising ``metrics.jsonl``, the atomic export
of ``final/``, the finished marker — is done once, in :mod:`ftflow.lifecycle`.

A backend:

- validates its own part of a method (``validate_method``), raising
  :class:`ftflow.config.ConfigError` for a setting it cannot honour — never ignoring it;
- says how its job starts (``launch``): the command line, the environment it needs, the
  conda environment file, and every file the job reads besides ``run.yaml`` (so the
  ``train`` rule declares them as inputs) — files it renders itself from ``run.yaml`` into
  the run's ``launch/`` folder, listed under ``launch_files`` by ``render``;
- lists its checkpoints and says which are complete (``checkpoints``);
- renders the settings it hands to its library (``render``: pure, no training), trains
  (``train``), exports the trained model into a folder (``export``) and converts its own
  metric records into the contract's rows (``metrics``).

Every backend's ``metrics.jsonl`` rows have at least :func:`metric_keys` of the method's kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ftflow.paths import Run
from ftflow.spec import RunSpec

#: The keys every backend writes in each ``metrics.jsonl`` row.
BASE_KEYS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second")
#: What DPO adds.
DPO_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")

#: A checkpoint counts once this marker was written after the backend saved all of it.
COMPLETE_MARKER = ".complete"


def metric_keys(kind: str) -> tuple[str, ...]:
    """The contract's metric keys for a method kind (``sft``, ``lora``, ``dpo``)."""
    return BASE_KEYS + (DPO_KEYS if kind == "dpo" else ())


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    complete: bool


@dataclass(frozen=True)
class Launch:
    """How a training job starts: ``<command> run.yaml`` with ``env`` set."""

    command: str
    env: Mapping[str, str] = field(default_factory=dict)
    conda_env: str = ""  # relative to the repository root
    inputs: tuple[str, ...] = ()  # files the job reads besides run.yaml

    def env_exports(self) -> str:
        """``export K=V && …`` words for a shell line (empty when no variables)."""
        return "".join(f"export {k}={v} && " for k, v in sorted(self.env.items()))


class Backend(Protocol):
    name: str

    def validate_method(self, where: str, method: Mapping[str, Any]) -> None: ...

    def launch(self, method: Mapping[str, Any], run: Run, stage: str | None = None) -> Launch: ...

    def checkpoints(self, folder: Path) -> list[Checkpoint]: ...

    def render(self, spec: RunSpec) -> dict[str, Any]: ...

    def train(self, spec: RunSpec, resume: Checkpoint | None) -> Any: ...

    def export(self, trained: Any, spec: RunSpec, dest: Path) -> None: ...

    def metrics(self, spec: RunSpec) -> list[dict[str, Any]]: ...


def names() -> tuple[str, ...]:
    """The backends a model may name (``models.<name>.backend``)."""
    return tuple(_REGISTRY)


def get(name: str) -> Backend:
    """The backend called ``name``; a ``ValueError`` names the allowed ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend {name!r} is not known (allowed: {', '.join(names())})") from None
    return factory()


def _trl() -> Backend:
    from ftflow.backends.trl import TrlBackend

    return TrlBackend()


def _automodel() -> Backend:
    from ftflow.backends.automodel import AutomodelBackend

    return AutomodelBackend()


_REGISTRY = {"trl": _trl, "automodel": _automodel}
