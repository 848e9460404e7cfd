"""The backend-neutral life of one training job, done once for every backend.

1. **Claim** — the checkpoints must have been made for exactly this run
   (:mod:`ftflow.checkpoints`: fingerprint of config, tokenised data and DPO parent). The
   ``train`` rule claims them before the launcher starts any process; a job started by
   hand on one process claims them here.
2. **Resume point** — incomplete checkpoints (a killed attempt's) are discarded, the newest
   complete one is resumed, and the live metric lines after it are cut (they are logged
   again).
3. **Train** — the backend's own ``train``, with the job's tracker open
   (:mod:`ftflow.tracking`: TensorBoard, W&B offline), which also receives every
   finished ``metrics.jsonl`` row the backend did not log live.
4. **Finish** — every process takes part in the backend's export into a temporary folder
   (gathering sharded weights is collective); the main process then replaces ``final/``
   with it atomically, with no absolute paths inside; the backend's metric rows are
   checked against the contract's keys and written to ``metrics.jsonl`` atomically; the
   checkpoints are marked finished, so they are never resumed again.

Raises :class:`NonFiniteLossError` (from a backend) when the loss turns NaN/Inf, and
:class:`MetricsContractError` when a backend's rows miss a contract key.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ftflow import backends, checkpoints, files, interrupt, tracking
from ftflow.backends import Backend, Checkpoint
from ftflow.spec import RunSpec


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss."""


class MetricsContractError(RuntimeError):
    """A backend's metric rows do not carry the contract's keys."""


def _say(message: str) -> None:
    print(f"[ftflow] {message}", flush=True)


def rank() -> tuple[int, int]:
    """This process's rank and the world size (from the launcher's environment)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


# ------------------------------------------------------------------------- begin


def begin(spec: RunSpec, backend: Backend) -> Checkpoint | None:
    """Claim the checkpoints (or check the rule did), clean up, choose the resume point."""
    run_config = spec.paths.run_config
    folder = spec.paths.checkpoints
    this_rank, world_size = rank()
    try:
        checkpoints.check_claimed(run_config)
    except checkpoints.StaleCheckpointsError:
        if world_size > 1:
            raise
        _say(checkpoints.claim(run_config))  # started by hand: claim here
    _say(
        f"rank {this_rank} of {world_size}, backend {backend.name}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
        f"SLURM_JOB_ID={os.environ.get('SLURM_JOB_ID', 'none')}"
    )
    previous = interrupt.previous_stop(folder, remove=this_rank == 0)
    if previous:
        _say(f"the previous attempt {previous}")
    listed = backend.checkpoints(folder)
    complete = [c for c in listed if c.complete]
    partial = folder / checkpoints.METRICS_PARTIAL
    if this_rank == 0:
        for gone in checkpoints.discard_incomplete(folder, backend):
            _say(f"discarded incomplete checkpoint {gone.name}")
    if complete:
        resume = complete[-1]
        _say(f"resuming from {resume.path.name} (step {resume.step})")
        if this_rank == 0:
            checkpoints.truncate_metrics(partial, resume.step)
        return resume
    if this_rank == 0:
        partial.unlink(missing_ok=True)
        _say("starting from scratch")
    return None


# ------------------------------------------------------------------------ finish


def check_metrics(rows: list[dict], kind: str, source: str) -> None:
    if not rows:
        raise MetricsContractError(f"{source}: the backend logged no metric rows")
    want = backends.metric_keys(kind)
    for row in rows:
        missing = [k for k in want if k not in row]
        if missing:
            raise MetricsContractError(
                f"{source}: a metric row of step {row.get('step')} lacks {', '.join(missing)} "
                f"(every row has: {', '.join(want)})"
            )


def _portable(folder: Path, spec: RunSpec) -> None:
    """No absolute machine paths in final/: an adapter names its base by config name."""
    adapter_config = folder / "adapter_config.json"
    if adapter_config.exists():
        data = json.loads(adapter_config.read_text())
        data["base_model_name_or_path"] = spec.run.model
        files.write_json(adapter_config, data)
    files.write_json(
        folder / "ftflow.json",
        {"run": spec.raw["run"], "kind": spec.method.kind, "backend": spec.model.backend},
    )


def finish(spec: RunSpec, backend: Backend, trained) -> Path:
    """Export ``final/`` and ``metrics.jsonl`` atomically, mark the training finished.

    Every process takes part in the export (gathering DeepSpeed/FSDP shards is
    collective); the main process alone checks the metrics, writes and renames.
    """
    final = spec.paths.final
    staged = final.with_name(final.name + ".tmp")
    main = rank()[0] == 0
    rows: list[dict] = []
    if main:
        rows = backend.metrics(spec)
        check_metrics(rows, spec.method.kind, f"{spec.paths.checkpoints} ({backend.name})")
    if spec.stage:  # a sanity stage is judged by its metrics; its weights are not kept
        if main:
            files.write_jsonl(rows, spec.paths.metrics)
            checkpoints.mark_finished(spec.paths.checkpoints)
            _say(f"stage {spec.stage} finished after step {rows[-1]['step']}")
        return spec.paths.metrics
    if main:
        shutil.rmtree(staged, ignore_errors=True)
        staged.mkdir(parents=True)
    try:
        backend.export(trained, spec, staged)
    except BaseException:
        if main:
            shutil.rmtree(staged, ignore_errors=True)
        raise
    if not main:
        return final
    _portable(staged, spec)
    files.replace_dir(staged, final)
    files.write_jsonl(rows, spec.paths.metrics)
    checkpoints.mark_finished(spec.paths.checkpoints)
    _say(f"wrote {final} after step {rows[-1]['step']}")
    return final


def run(spec: RunSpec) -> Path:
    """The whole life of one training job for ``spec``'s backend."""
    backend = backends.get(spec.model.backend)
    resume = begin(spec, backend)
    from transformers import set_seed

    set_seed(spec.run.seed)
    main = rank()[0] == 0
    with tracking.open_tracker(spec, resume.step if resume else 0, main) as tracker:
        try:
            trained = backend.train(spec, resume)
        except interrupt.Interrupted as stopped:
            if main:  # the retry's log tells (Snakemake empties a job's log per attempt)
                interrupt.record_stop(spec.paths.checkpoints, str(stopped))
            raise
        done = finish(spec, backend, trained)
        if main:  # the rows no backend logged live (all of them, for some backends)
            tracker.log_rows(files.read_jsonl(spec.paths.metrics))
    return done
