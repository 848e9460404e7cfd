"""Which checkpoints a run may resume: its fingerprint, and what `claim` keeps or discards."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from ftflow import checkpoints, paths

RUN = {"model": "tiny", "method": "dpo", "dataset": "prefs", "seed": 1}
PARENT = {"model": "tiny", "method": "sft", "dataset": "secure_code", "seed": 1}
CFG = {
    "run": RUN,
    "model": {"backend": "trl"},  # every run.yaml names its backend
    "method": {"kind": "dpo", "learning_rate": 1e-4, "save_steps": 8, "save_total_limit": 2},
    "batch": {"global_batch_size": 8},
    "parent": PARENT,
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    """A workflow root holding one DPO run's run.yaml, its prepared data and its parent."""
    monkeypatch.chdir(tmp_path)
    _write_json(paths.prepared("tiny", "prefs"), {"key": "aaaa"})
    parent_metrics = paths.metrics_file(**PARENT)
    parent_metrics.parent.mkdir(parents=True)
    parent_metrics.write_text('{"step": 1, "loss": 2.0}\n')
    _write_run(CFG)
    return tmp_path


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _write_run(cfg: dict) -> Path:
    run_config = paths.run_config(**cfg["run"])
    run_config.parent.mkdir(parents=True, exist_ok=True)
    run_config.write_text(yaml.safe_dump(cfg))
    return run_config


def _with(**method) -> dict:
    cfg = copy.deepcopy(CFG)
    cfg["method"].update(method)
    return cfg


def _fake_checkpoint(run_config: Path, step: int) -> Path:
    """What the trainer leaves: checkpoint-N with its completion marker."""
    ckpt = run_config.parent / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights")
    (ckpt / checkpoints.COMPLETE_MARKER).write_text(f"{step}\n")
    return ckpt


def test_fingerprint_follows_what_changes_the_weights(workdir: Path):
    base = checkpoints.fingerprint(CFG)
    assert checkpoints.fingerprint(_with(save_steps=100, save_total_limit=5)) == base
    assert checkpoints.fingerprint(_with(learning_rate=2e-4))["config"] != base["config"]

    _write_json(paths.prepared("tiny", "prefs"), {"key": "bbbb"})  # the data was re-tokenised
    assert checkpoints.fingerprint(CFG)["data"] == "bbbb"

    paths.metrics_file(**PARENT).write_text('{"step": 1, "loss": 1.5}\n')  # parent retrained
    assert checkpoints.fingerprint(CFG)["parent"] != base["parent"]


def test_claim_keeps_matching_checkpoints(workdir: Path):
    run_config = paths.run_config(**RUN)
    assert "new checkpoints folder" in checkpoints.claim(run_config)
    ckpt = _fake_checkpoint(run_config, 8)
    _write_run(_with(save_steps=4))  # checkpointing more often keeps the progress
    assert "checkpoint-8 matches" in checkpoints.claim(run_config)
    assert ckpt.is_dir()
    checkpoints.check_claimed(run_config)  # what a second training process checks


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda: _write_run(_with(learning_rate=3e-4)), "another config"),
        (lambda: _write_json(paths.prepared("tiny", "prefs"), {"key": "cc"}), "tokenised data"),
        (lambda: paths.metrics_file(**PARENT).write_text("{}\n"), "another parent model"),
    ],
)
def test_claim_discards_checkpoints_of_another_run(workdir: Path, change, why):
    run_config = paths.run_config(**RUN)
    checkpoints.claim(run_config)
    ckpt = _fake_checkpoint(run_config, 8)
    # Another run's checkpoints, which nothing here may touch.
    other = _fake_checkpoint(_write_run({**CFG, "run": {**RUN, "seed": 2}}), 8)
    change()
    with pytest.raises(checkpoints.StaleCheckpointsError, match="has not been claimed"):
        checkpoints.check_claimed(run_config)
    message = checkpoints.claim(run_config)
    assert "discarded" in message and why in message, message
    assert not ckpt.exists() and other.is_dir()
    assert checkpoints.complete_checkpoints(ckpt.parent) == []
    checkpoints.check_claimed(run_config)


def test_a_finished_training_is_never_resumed(workdir: Path):
    run_config = paths.run_config(**RUN)
    checkpoints.claim(run_config)
    ckpt = _fake_checkpoint(run_config, 48)
    checkpoints.mark_finished(ckpt.parent)
    with pytest.raises(checkpoints.StaleCheckpointsError):
        checkpoints.check_claimed(run_config)
    message = checkpoints.claim(run_config)
    assert "the previous training of this run finished" in message
    assert not ckpt.exists()


def test_checkpoints_without_a_fingerprint_are_not_trusted(workdir: Path):
    run_config = paths.run_config(**RUN)
    ckpt = _fake_checkpoint(run_config, 8)  # e.g. left by an older ftflow, or copied in
    assert "no readable fingerprint.json" in checkpoints.claim(run_config)
    assert not ckpt.exists()
