"""TRL/Trainer callbacks: the contract's metric rows, live, the complete marker, and the
stops (a sanity stage's time budget, a signal: :mod:`ftflow.interrupt`)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from transformers import TrainerCallback

from ftflow import interrupt, tracking
from ftflow.backends import COMPLETE_MARKER, DPO_KEYS, metric_keys
from ftflow.checkpoints import retain
from ftflow.lifecycle import NonFiniteLossError


class MetricsCallback(TrainerCallback):
    """One contract row per logged step, appended to ``partial``; NaN/Inf loss stops."""

    def __init__(self, partial: Path, kind: str):
        self.partial = partial
        self.keys = metric_keys(kind)
        self.last_time = None
        self.last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.last_time = time.perf_counter()
        self.last_tokens = state.num_input_tokens_seen or 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:  # the end-of-training summary
            return
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss} at step {state.global_step}: stopping instead of training "
                "on (lower the learning rate, check the data, or use float32)"
            )
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen or 0
        elapsed = max(now - self.last_time, 1e-9)
        row = {
            "step": state.global_step,
            "epoch": logs.get("epoch", state.epoch),
            "loss": loss,
            "learning_rate": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens_per_second": (tokens - self.last_tokens) / elapsed,
        }
        for key in DPO_KEYS:
            if key in self.keys:
                row[key] = logs.get(key)
        self.last_time, self.last_tokens = now, tokens
        if state.is_world_process_zero:
            with open(self.partial, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            tracking.log(row)  # TensorBoard / W&B, live


class CompleteMarker(TrainerCallback):
    """Mark a checkpoint complete once the trainer has saved all of it, record how long
    the save took (the signal lead is derived from it: :mod:`ftflow.interrupt`), then keep
    the newest ``keep`` complete checkpoints (:func:`ftflow.checkpoints.retain`).

    Registered last, so that its ``on_step_end`` sees every decision to save this step.
    """

    def __init__(self, folder: Path, keep: int, backend):
        self.timer = interrupt.SaveTimer(folder)
        self.keep = keep
        self.backend = backend

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            self.timer.start()

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                (checkpoint / COMPLETE_MARKER).write_text(f"{state.global_step}\n")
                self.timer.stop()
            retain(Path(args.output_dir), self.keep, self.backend)


class StopOnSignal(TrainerCallback):
    """After a USR1 (SLURM's warning) or a TERM (preemption), every process ends the current
    step with a checkpoint and training stops; :attr:`stopped_at` tells the backend that
    the run was interrupted, not finished (:class:`ftflow.interrupt.Interrupted`)."""

    stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if interrupt.any_process(interrupt.requested() is not None, args.device):
            if state.global_step < state.max_steps:  # the last step ends the run anyway
                self.stopped_at = state.global_step
            control.should_training_stop = True
            control.should_save = True


class TimeBudget(TrainerCallback):
    """Stop training once ``minutes`` of wall time have passed (a sanity stage's length).

    Every process must stop at the same step (they meet in collectives), so the decision
    is all-reduced: training stops when any process is over the budget.
    """

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.started = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if interrupt.any_process(time.monotonic() - self.started > self.seconds, args.device):
            control.should_training_stop = True
            control.should_save = True  # the stage ends on a complete checkpoint
