"""Experiment tracking from the contract's metric rows: TensorBoard, and W&B offline.

Backend-neutral: a training job opens one :class:`Tracker` (:func:`open_tracker`, main
process only) and hands it the same rows that go to ``metrics.jsonl``. A backend that
has its rows live (TRL's metrics callback) passes each one through :func:`log` as it is
logged; whatever was not logged live (NeMo Automodel's rows, read from its own log when
training ends) is logged from the finished ``metrics.jsonl``. Each row's numeric keys
become scalars ``train/<key>`` at the row's ``step``.

What the run's ``tracking`` block (in ``run.yaml``) turns on:

- ``tensorboard`` (default on): event files in ``<run>/tensorboard/``. A resumed job
  opens its writer with ``purge_step`` one past the checkpoint it resumed, so TensorBoard
  hides what the killed attempt logged after that checkpoint and shows the steps logged
  again once; a job that starts from scratch removes the event files of the training
  whose checkpoints were discarded.
- ``wandb`` (off unless configured): a Weights & Biases run written by the real
  ``wandb`` library into ``<run>/wandb/``, in ``offline`` mode by default — compute nodes
  have no internet; :func:`sync` uploads it later from the login node (the
  ``sync_tracking`` rule). Its name and tags carry the run identity. Its id lives beside
  the checkpoints (``checkpoints/tracking.json``): a retried job that resumes them
  continues the same W&B run, and skips the steps an earlier attempt already wrote
  (W&B steps only increase); a training started afresh gets a new id. The API key is
  read by ``wandb`` from ``WANDB_API_KEY`` in the environment, never from or into a file.

``wandb`` is imported only when a run configures it (it adds about a second to a job's
start). Raises :class:`SyncError` when ``wandb sync`` still fails after its retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ftflow import files
from ftflow.paths import RunPaths
from ftflow.spec import RunSpec

#: The W&B id of a training and the last step written to it, beside its checkpoints.
STATE_FILE = "tracking.json"
#: Where ``wandb sync`` uploads when ``WANDB_BASE_URL`` does not say otherwise.
DEFAULT_ENDPOINT = "https://api.wandb.ai"
#: ``wandb`` marks a run file it uploaded completely with this suffix.
SYNCED_SUFFIX = ".synced"


class SyncError(RuntimeError):
    """``wandb sync`` did not upload every offline run."""


#: The workflow's resolved ``tracking`` block, as JSON, exported by the Snakefile to every
#: job. Not in ``run.yaml`` and not a rule's param: where a run's metrics go does not
#: change what it trains, so changing it retrains nothing.
ENV = "FTFLOW_TRACKING"


def settings_of(spec: RunSpec) -> dict[str, Any]:
    """Where this job tracks to: a ``tracking`` block of the run's own (a job started by
    hand), else the workflow's (:data:`ENV`), defaults filled in."""
    block = spec.raw.get("tracking")
    if block is None:
        block = json.loads(os.environ.get(ENV) or "{}")
    block = dict(block)
    block.setdefault("tensorboard", True)
    return block


def identity(spec: RunSpec) -> tuple[str, list[str]]:
    """The W&B run name and tags: model/method/dataset/seed (and the sanity stage)."""
    run = spec.run
    name = str(run) + (f"/sanity/{spec.stage}" if spec.stage else "")
    tags = [run.model, run.method, run.dataset, f"seed{run.seed}"]
    if spec.stage:
        tags.append(f"sanity:{spec.stage}")
    return name, tags


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """A metric row's numbers as ``train/<key>`` (the step is the x-axis, not a scalar)."""
    return {
        f"train/{key}": float(value)
        for key, value in row.items()
        if key != "step" and isinstance(value, int | float) and not isinstance(value, bool)
    }


class Tracker:
    """The TensorBoard writer and the W&B run of one training job (main process)."""

    def __init__(self, spec: RunSpec, resume_step: int):
        self.spec = spec
        self.paths: RunPaths = spec.paths
        self.settings = settings_of(spec)
        self._tb = None
        self._tb_step = resume_step
        self._wandb = None
        self._wandb_step = resume_step
        self._state: dict[str, Any] = {}
        if self.settings["tensorboard"]:
            self._tb = self._open_tensorboard(resume_step)
        wandb_settings = self.settings.get("wandb")
        if wandb_settings and wandb_settings["mode"] != "disabled":
            self._wandb = self._open_wandb(wandb_settings, resume_step)

    # ----------------------------------------------------------------- open

    def _open_tensorboard(self, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        folder = self.paths.tensorboard
        if resume_step == 0:  # the events of a discarded training
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        return SummaryWriter(log_dir=str(folder), purge_step=resume_step + 1)

    def _state_path(self) -> Path:
        return self.paths.checkpoints / STATE_FILE

    def _open_wandb(self, settings: Mapping[str, Any], resume_step: int):
        state_path = self._state_path()
        state = {}
        if resume_step and state_path.exists():
            state = json.loads(state_path.read_text())
        if not state.get("wandb_id"):
            state = {"wandb_id": new_run_id(self.spec), "wandb_step": 0}
        self._state = state
        self._wandb_step = max(resume_step, int(state.get("wandb_step", 0)))
        files.write_json(state_path, state)
        if settings["mode"] == "offline":
            # no error reports to the network either: a compute node has none
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
        import wandb

        name, tags = identity(self.spec)
        run = self.spec.run
        return wandb.init(
            mode=settings["mode"],
            project=settings["project"],
            entity=settings.get("entity"),
            dir=str(self.paths.root),  # wandb writes <dir>/wandb/
            id=state["wandb_id"],
            resume="allow",
            name=name,
            tags=tags,
            group=f"{run.model}/{run.method}/{run.dataset}",
            job_type="sanity" if self.spec.stage else "train",
            config=self.spec.raw,
            settings=wandb.Settings(console="off", disable_git=True, save_code=False),
        )

    # ------------------------------------------------------------------ log

    def log(self, row: Mapping[str, Any]) -> None:
        """Log one contract row; a step already logged is not logged again."""
        step = int(row["step"])
        values = scalars(row)
        if self._tb is not None and step > self._tb_step:
            for tag, value in values.items():
                if math.isfinite(value):
                    self._tb.add_scalar(tag, value, step)
            self._tb.flush()
            self._tb_step = step
        if self._wandb is not None and step > self._wandb_step:
            self._wandb.log(values, step=step)
            self._wandb_step = step
            self._state["wandb_step"] = step
            files.write_json(self._state_path(), self._state)

    def log_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.log(row)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


class _NoTracker:
    """What a process other than the main one holds: it logs nothing."""

    def log(self, row: Mapping[str, Any]) -> None:
        pass

    def log_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        pass

    def close(self) -> None:
        pass


_ACTIVE: Tracker | _NoTracker = _NoTracker()


@contextlib.contextmanager
def open_tracker(spec: RunSpec, resume_step: int, main: bool) -> Iterator[Tracker | _NoTracker]:
    """The job's tracker while training (the main process's; a silent one elsewhere),
    also reachable through :func:`log` for a backend's live rows."""
    global _ACTIVE
    tracker = Tracker(spec, resume_step) if main else _NoTracker()
    _ACTIVE = tracker
    try:
        yield tracker
    finally:
        _ACTIVE = _NoTracker()
        tracker.close()


def log(row: Mapping[str, Any]) -> None:
    """Log a live row to the job's open tracker (nothing when none is open)."""
    _ACTIVE.log(row)


def new_run_id(spec: RunSpec) -> str:
    """A W&B run id: the run identity's digest, and when this training started."""
    name, _ = identity(spec)
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{digest}-{time.time_ns():x}"


# ------------------------------------------------------------------------- sync


def offline_runs(folders: Iterable[Path]) -> list[Path]:
    """The offline W&B run folders (``offline-run-*`` with a ``.wandb`` file) under the
    ``wandb/`` folders given, oldest first."""
    found = []
    for folder in folders:
        for run in sorted(Path(folder).glob("offline-run-*")):
            if run.is_dir() and any(run.glob("*.wandb")):
                found.append(run)
    return found


def is_synced(run: Path) -> bool:
    """``wandb sync`` uploaded every run file of this folder."""
    return all(f.with_name(f.name + SYNCED_SUFFIX).exists() for f in run.glob("*.wandb"))


def endpoint() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_ENDPOINT


def sync(
    runs: list[Path],
    retries: int,
    delay: float,
    timeout: float,
    say=print,
) -> list[Path]:
    """Upload the offline ``runs`` with ``wandb sync``; return the ones uploaded now.

    Tries ``retries + 1`` times, waiting ``delay`` seconds before the first retry and
    twice as long before each next one; one attempt may take ``timeout`` seconds. A run
    counts as uploaded once ``wandb`` has marked it synced (its exit status does not say).
    Nothing is deleted. Raises :class:`SyncError` naming the endpoint and the folders
    still unsynced.
    """
    if not os.environ.get("WANDB_API_KEY"):
        raise SyncError(
            "WANDB_API_KEY is not set: export it in the login node's environment before "
            "running sync_tracking (the key is read from the environment only)"
        )
    pending = [r for r in runs if not is_synced(r)]
    uploaded = []
    last = ""
    for attempt in range(retries + 1):
        if not pending:
            break
        if attempt:
            wait = delay * 2 ** (attempt - 1)
            say(f"retry {attempt} of {retries} in {wait:g} s")
            time.sleep(wait)
        command = [sys.executable, "-m", "wandb", "sync", *map(str, pending)]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            last = (proc.stdout + proc.stderr).strip()
        except subprocess.TimeoutExpired as error:
            out = error.stdout or b""
            last = (out.decode() if isinstance(out, bytes) else out).strip()
            last += f"\n(no answer within {timeout:g} s)"
        say(last)
        done = [r for r in pending if is_synced(r)]
        uploaded += done
        pending = [r for r in pending if r not in done]
    if pending:
        tail = "\n".join(last.splitlines()[-5:])
        raise SyncError(
            f"wandb sync to {endpoint()} failed after {retries + 1} attempt(s); "
            f"{len(pending)} offline run(s) left unsynced, kept as they were: "
            f"{', '.join(map(str, pending))}\nlast attempt:\n{tail}"
        )
    return uploaded


def sync_main(folders: list[Path], settings: Mapping[str, Any], out: Path) -> None:
    """What the ``sync_tracking`` rule runs: sync, then record what is synced in ``out``."""
    if not settings or settings.get("mode") != "offline":
        mode = settings.get("mode") if settings else None
        raise SyncError(
            "config key tracking.wandb: sync_tracking uploads offline W&B runs, and "
            + (f"tracking.wandb.mode is {mode}" if settings else "no tracking.wandb is set")
            + " (allowed: tracking.wandb with mode: offline)"
        )
    runs = offline_runs(folders)

    def say(line: str) -> None:
        print(f"[ftflow] {line}", flush=True)

    say(f"{len(runs)} offline W&B run(s) of finished trainings; endpoint {endpoint()}")
    sync(
        runs,
        settings["sync_retries"],
        settings["sync_retry_delay"],
        settings["sync_timeout"],
        say=say,
    )
    files.write_json(out, {"endpoint": endpoint(), "synced": [str(r) for r in runs]})
