"""A run's resumable training state, and when it may be resumed.

``checkpoints/`` is deliberately not a Snakemake output: it survives a failed, killed,
timed-out or requeued attempt, and the next attempt resumes from the newest *complete*
checkpoint (one whose ``.complete`` marker was written after the trainer saved it).

Surviving is also a danger: checkpoints made under another config, other data or
another parent model must never be resumed. Before training starts, :func:`claim`
compares the run's fingerprint — its resolved config (less the settings that only say
how often to checkpoint), the tokenised-cache key of its data and, for DPO, the
parent's metrics — with the one stored beside the checkpoints, and starts the run
afresh when they differ. A run whose training finished (``.finished``) is never
resumed either: Snakemake only trains it again when asked to (``--forcerun``, or a
changed input), and then it trains from scratch.

Usage (the ``train`` rule runs it once per job, before the launcher starts any process)::

    python -m ftflow.checkpoints results/<model>/<method>/<dataset>/seed<seed>/run.yaml
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import yaml

from ftflow import paths
from ftflow.backends import COMPLETE_MARKER  # noqa: F401  (re-exported)
from ftflow.files import iter_jsonl_lines, sha256_bytes, write_json

FINISHED_MARKER = ".finished"
FINGERPRINT = "fingerprint.json"
METRICS_PARTIAL = "metrics.partial.jsonl"

# How often to checkpoint changes no weight: changing it must not throw progress away.
CHECKPOINTING_ONLY = ("save_steps", "save_total_limit")


class StaleCheckpointsError(RuntimeError):
    """The checkpoints belong to another config, other data or another parent model."""


def _backend_of(checkpoints: Path):
    """The backend of the run that owns ``checkpoints`` (read from its run.yaml)."""
    from ftflow import backends

    run_config = Path(checkpoints).parent / "run.yaml"
    name = yaml.safe_load(run_config.read_text())["model"]["backend"]
    return backends.get(name)


def listed(checkpoints: Path, backend=None) -> list:
    """The backend's checkpoints in ``checkpoints``, oldest first (none: no folder)."""
    if not Path(checkpoints).is_dir():
        return []
    return (backend or _backend_of(checkpoints)).checkpoints(Path(checkpoints))


def complete_checkpoints(checkpoints: Path, backend=None) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return [c.path for c in listed(checkpoints, backend) if c.complete]


def step(checkpoint: Path, backend=None) -> int:
    """The training step a checkpoint folder holds; -1 when it is not a checkpoint."""
    for c in listed(Path(checkpoint).parent, backend):
        if c.path.name == Path(checkpoint).name:
            return c.step
    return -1


def discard_incomplete(checkpoints: Path, backend=None) -> list[Path]:
    """Remove checkpoints a killed attempt left half-written; return what went."""
    removed = []
    for c in listed(checkpoints, backend):
        if not c.complete:
            shutil.rmtree(c.path)
            removed.append(c.path)
    return removed


def retain(checkpoints: Path, keep: int, backend=None) -> list[Path]:
    """Keep the newest ``keep`` complete checkpoints (``save_total_limit``); return what went.

    Only complete checkpoints count, and only once marked: called by the backend right
    after it marks a new one, so the previous complete checkpoint — the one a resume
    needs until then — is still there at any moment a job may be killed. The newest
    complete checkpoint is never removed (``keep`` is at least 1). An incomplete one older
    than it is a killed save's leftover and goes; a newer incomplete one may be a save
    still being written and stays (the next attempt's start discards it if it is not).
    Both backends' own rotations are off: the Trainer's runs before the new checkpoint is
    marked and counts unmarked folders, Automodel's runs before ftflow marks.
    """
    found = listed(checkpoints, backend)
    complete = [c for c in found if c.complete]
    if not complete:
        return []
    kept = {c.path for c in complete[-max(keep, 1) :]}
    newest = complete[-1].step
    removed = []
    for c in found:
        if c.path in kept or (not c.complete and c.step > newest):
            continue
        shutil.rmtree(c.path)
        removed.append(c.path)
    return removed


def truncate_metrics(partial: Path, last_step: int) -> None:
    """Keep metric lines up to ``last_step``: a resumed run logs the later steps again."""
    if not partial.exists():
        return
    kept = [
        line
        for _, line in iter_jsonl_lines(partial.read_text())
        if json.loads(line)["step"] <= last_step
    ]
    partial.write_text("".join(line + "\n" for line in kept))


# ---------------------------------------------------------------------- fingerprint


def fingerprint(cfg: dict) -> dict[str, str | None]:
    """What the checkpoints of the run ``cfg`` (its run.yaml) were trained from.

    Paths are relative to the workflow root (the working directory), like every path
    in ftflow. ``data`` is the tokenised cache's key, which already covers the raw
    data's content and every setting that changes tokens.
    """
    method = {k: v for k, v in cfg["method"].items() if k not in CHECKPOINTING_ONLY}
    # Where the metrics are also logged (TensorBoard, W&B) changes no weight either.
    trained_from = {**{k: v for k, v in cfg.items() if k != "tracking"}, "method": method}
    run = cfg["run"]
    manifest = json.loads(paths.prepared(run["model"], run["dataset"]).read_text())
    parent = None
    if "parent" in cfg:
        p = cfg["parent"]
        metrics = paths.metrics_file(p["model"], p["method"], p["dataset"], p["seed"])
        parent = sha256_bytes(metrics.read_bytes())
    return {
        "config": sha256_bytes(json.dumps(trained_from, sort_keys=True).encode()),
        "data": manifest["key"],
        "parent": parent,
    }


def _stored(checkpoints: Path) -> dict | None:
    try:
        return json.loads((checkpoints / FINGERPRINT).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _why_stale(checkpoints: Path, current: dict) -> str | None:
    """Why the state in ``checkpoints`` must not be resumed; None when it may be."""
    if (checkpoints / FINISHED_MARKER).exists():
        return "the previous training of this run finished"
    stored = _stored(checkpoints)
    if stored is None:
        return f"they have no readable {FINGERPRINT}"
    named = {"config": "config", "data": "tokenised data", "parent": "parent model"}
    changed = [named[k] for k in named if stored.get(k) != current[k]]
    return f"they were made from another {' and '.join(changed)}" if changed else None


def _run_state(run_config: Path) -> tuple[Path, dict]:
    """The run's checkpoints folder and its current fingerprint."""
    cfg = yaml.safe_load(Path(run_config).read_text())
    return Path(run_config).parent / "checkpoints", fingerprint(cfg)


def claim(run_config: Path) -> str:
    """Make ``checkpoints/`` safe to resume for the run ``run_config``; say what was done.

    Keeps checkpoints whose fingerprint matches; otherwise empties the folder (this run's
    own, nothing else) and records the current fingerprint. Call it from one process,
    before any training process starts.
    """
    checkpoints, current = _run_state(run_config)
    checkpoints.mkdir(parents=True, exist_ok=True)
    fresh = not any(checkpoints.iterdir())
    why = None if fresh else _why_stale(checkpoints, current)
    if not fresh and why is None:
        complete = complete_checkpoints(checkpoints)
        if complete:
            return f"{complete[-1]} matches this run's config and data: training resumes"
        return f"{checkpoints} matches this run but holds no complete checkpoint yet"
    if why is not None:
        shutil.rmtree(checkpoints)
        checkpoints.mkdir()
    write_json(checkpoints / FINGERPRINT, current)
    if why is None:
        return f"new checkpoints folder {checkpoints}"
    return f"discarded the checkpoints in {checkpoints}: {why}"


def check_claimed(run_config: Path) -> None:
    """Raise :class:`StaleCheckpointsError` unless ``claim`` has approved the checkpoints."""
    checkpoints, current = _run_state(run_config)
    why = _why_stale(checkpoints, current)
    if why is not None:
        raise StaleCheckpointsError(
            f"{checkpoints} has not been claimed for this run ({why}); run "
            f"`python -m ftflow.checkpoints {run_config}` once before starting the processes"
        )


def mark_finished(checkpoints: Path) -> None:
    """Training and export are done: these checkpoints are never resumed again."""
    (checkpoints / FINISHED_MARKER).write_text("training finished; final/ was written\n")


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Claim a run's checkpoints before training.")
    parser.add_argument("run_config", type=Path, help="the run's run.yaml")
    args = parser.parse_args(argv)
    print(f"[ftflow] {claim(args.run_config)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
