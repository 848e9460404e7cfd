"""Which checkpoints a run may resume: its fingerprint, and what `claim` keeps or discards."""

from __future__ import annotations

import copy
import json
import shutil
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


# ------------------------------------------------------------------------- retention


def _folder(checkpoints_dir: Path, step: int, complete: bool) -> Path:
    ckpt = checkpoints_dir / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    if complete:
        (ckpt / checkpoints.COMPLETE_MARKER).write_text(f"{step}\n")
    return ckpt


def test_retention_counts_complete_checkpoints_and_keeps_the_newest(tmp_path: Path):
    from ftflow.backends.trl import TrlBackend

    folder = tmp_path / "checkpoints"
    for step, complete in [(2, True), (3, False), (4, True), (6, True), (8, False)]:
        _folder(folder, step, complete)
    trl = TrlBackend()
    # keep 2: the oldest complete one goes, and the leftover of a killed save at step 3;
    # the incomplete step 8 is newer than every complete one (a save in progress) and stays
    gone = checkpoints.retain(folder, 2, trl)
    assert sorted(p.name for p in gone) == ["checkpoint-2", "checkpoint-3"]
    assert [(c.step, c.complete) for c in trl.checkpoints(folder)] == [
        (4, True),
        (6, True),
        (8, False),
    ]
    # keep 1: the newest complete one is what a resume needs, never the incomplete newer one
    checkpoints.retain(folder, 1, trl)
    assert [(c.step, c.complete) for c in trl.checkpoints(folder)] == [(6, True), (8, False)]
    # nothing complete yet: nothing is removed
    only_incomplete = tmp_path / "fresh"
    _folder(only_incomplete, 5, False)
    assert checkpoints.retain(only_incomplete, 1, trl) == []
    assert (only_incomplete / "checkpoint-5").is_dir()


@pytest.mark.slow
def test_the_trainer_always_leaves_a_complete_checkpoint(tmp_path: Path, monkeypatch):
    """A real TRL run, save_total_limit 1, a save at every step. At each save — the new
    checkpoint written, not yet marked complete: a kill then leaves it incomplete — the
    previous complete checkpoint must still be there. transformers' own rotation (run here
    once for contrast) has deleted it by then; ftflow's (checkpoints.retain) has not."""
    from conftest import copy_workflow, load_default_config, snakemake, write_config
    from transformers import TrainerCallback

    from ftflow import backends, spec
    from ftflow.backends.trl.callbacks import CompleteMarker
    from ftflow.backends.trl.trainer import build_trainer

    work = copy_workflow(tmp_path / "ftflow")
    config = load_default_config()
    config.pop("evaluations")
    config["methods"]["sft"].update(max_steps=4, save_steps=1, save_total_limit=1)
    config["grid"] = [
        {"models": ["tiny"], "methods": ["sft"], "datasets": ["secure_code"], "seeds": [9]}
    ]
    write_config(work, config)
    run_config = paths.run_config("tiny", "sft", "secure_code", 9)
    snakemake(work, str(run_config), str(paths.prepared("tiny", "secure_code")), "--cores", "2")
    monkeypatch.chdir(work)
    run = spec.load(run_config)
    trl = backends.get("trl")
    folder = run.paths.checkpoints

    def train(rendered: dict) -> list[list[int]]:
        """Train; return the complete checkpoints found at each save, before marking."""
        shutil.rmtree(folder, ignore_errors=True)
        _folder(folder, 0, complete=False)  # an older attempt's half-written save
        seen: list[list[int]] = []

        class Probe(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                seen.append([c.step for c in trl.checkpoints(folder) if c.complete])
                if state.global_step == 2:  # a newer save still being written elsewhere
                    _folder(folder, 99, complete=False)

        trainer = build_trainer(run, rendered, tmp_path / "metrics.partial.jsonl")
        callbacks = trainer.callback_handler.callbacks
        marker = next(i for i, c in enumerate(callbacks) if isinstance(c, CompleteMarker))
        callbacks.insert(marker, Probe())  # runs just before the marker
        trainer.train()
        return seen

    rendered = trl.render(run)
    assert rendered["trainer"]["save_total_limit"] is None  # the Trainer rotates nothing
    assert train(rendered) == [[], [1], [2], [3]]
    assert [(c.step, c.complete) for c in trl.checkpoints(folder)] == [(4, True), (99, False)]

    stock = trl.render(run)
    stock["trainer"]["save_total_limit"] = 1  # the Trainer's own rotation
    stock["retention"]["save_total_limit"] = 1000  # ftflow's keeps every complete one
    assert [] in train(stock)[1:]  # a moment with no checkpoint to resume from
