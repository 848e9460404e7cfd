"""Run NeMo Automodel's fine-tuning recipe in this process, on the rendered YAML.

The recipe is ``TrainFinetuneRecipeForNextTokenPrediction``, driven as its own ``main``
drives it (load the YAML, ``setup``, ``run_train_validation_loop``) — no command-line
overrides, which Automodel would silently ignore in the wrong form. ftflow subclasses it
for the lifecycle's two needs and nothing else:

- at every checkpoint, the buffered training log is flushed *before* the checkpoint is
  written, and the checkpoint is marked complete (``.complete``) after Automodel has
  published it; so a killed job resumes from a checkpoint whose metric lines are all on
  disk (Automodel buffers 100 lines and would lose them); only then are older checkpoints
  removed (``save_total_limit``, :func:`ftflow.checkpoints.retain`; Automodel's own pruning
  is off);
- a logged loss that is NaN or Inf stops the run with :class:`NonFiniteLossError`;
- each save's duration is recorded for the signal's lead (:mod:`ftflow.interrupt`).

A USR1 or TERM is Automodel's own preemption checkpoint (its step scheduler's
``preemption_signal``, rendered by the backend): every process ends the current step with
a checkpoint and the loop ends; :func:`run` then raises
:class:`~ftflow.interrupt.Interrupted` instead of letting the run count as finished.
"""

from __future__ import annotations

import math
from pathlib import Path

from ftflow import checkpoints, interrupt
from ftflow.backends import COMPLETE_MARKER
from ftflow.backends.automodel import AutomodelBackend
from ftflow.lifecycle import NonFiniteLossError, rank


def _is_main() -> bool:
    return rank()[0] == 0


def _recipe_class(keep: int):
    from nemo_automodel.recipes.llm.train_ft import TrainFinetuneRecipeForNextTokenPrediction

    class FtflowRecipe(TrainFinetuneRecipeForNextTokenPrediction):
        def save_checkpoint(self, epoch, step, train_loss, val_loss=None, **kwargs):
            folder = Path(self.checkpointer.config.checkpoint_dir)
            timer = interrupt.SaveTimer(folder)
            timer.start()
            self.metric_logger_train.flush()
            super().save_checkpoint(epoch, step, train_loss, val_loss, **kwargs)
            path = folder / f"epoch_{epoch}_step_{step}"
            if _is_main():
                if path.is_dir():
                    (path / COMPLETE_MARKER).write_text(f"{step + 1}\n")
                    timer.stop()
                checkpoints.retain(folder, keep, AutomodelBackend())

        def log_train_metrics(self, log_data):
            loss = float(log_data.metrics["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss} at step {log_data.step + 1}: stopping instead of "
                    "training on (lower the learning rate, check the data, or use float32)"
                )
            super().log_train_metrics(log_data)

    return FtflowRecipe


def run(config_path: Path, restore_from: Path | None, keep: int):
    """Train with the YAML at ``config_path``; resume from ``restore_from`` when given;
    keep the newest ``keep`` complete checkpoints."""
    from ftflow.backends.automodel import cpu_shim

    if cpu_shim.apply():
        print("[ftflow] automodel: no CUDA, CPU shim applied (ftflow.backends.automodel.cpu_shim)")
    from nemo_automodel.components.config.loader import load_yaml_config

    cfg = load_yaml_config(str(config_path))
    if restore_from is not None:
        cfg.set_by_dotted("checkpoint.restore_from", str(Path(restore_from).resolve()))
    recipe = _recipe_class(keep)(cfg)
    recipe.setup()
    interrupt.note_before_installed()  # the step scheduler's preemption handlers
    recipe.run_train_validation_loop()
    scheduler = recipe.step_scheduler
    if scheduler.sigterm_flag and scheduler.step < scheduler.max_steps:
        raise interrupt.Interrupted(
            f"stopped by {interrupt.requested() or 'a signal'} after step {scheduler.step}: "
            "its checkpoint is complete; the retry resumes from it"
        )
    return recipe
