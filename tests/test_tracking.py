"""Tracking, for real: TensorBoard event files and offline W&B runs written by the real
libraries during real trainings (TRL live, a sanity stage, NeMo Automodel at the end), read
back and compared with metrics.jsonl; the API key in no file; `sync_tracking` against an
unreachable endpoint fails clearly after its retries and loses nothing."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import struct
from pathlib import Path

import pytest
from conftest import copy_workflow, load_default_config, snakemake, write_config

from ftflow import paths, spec, tracking
from ftflow.config import resolve_tracking, validate
from ftflow.files import read_jsonl

pytestmark = pytest.mark.slow

SEED = 7
#: A fake key: what must never reach a file.
API_KEY = "ftflowtestkey" + "0123456789abcdef" * 2 + "abcdefab"
STAGE = "one"
TRL = paths.RunPaths.of("tiny", "sft", "secure_code", SEED)
AUTOMODEL = paths.RunPaths.of("tiny_hybrid", "sft_am", "secure_code", SEED)
WANDB = {
    "project": "ftflow-test",
    "entity": "ftflow-team",
    "sync_retries": 2,
    "sync_retry_delay": 0.2,
    "sync_timeout": 30,
}


def _config() -> dict:
    config = load_default_config()
    config.pop("evaluations")
    sft = config["methods"]["sft"]
    sft.update(max_steps=6, save_steps=3, lr_scheduler="constant")
    config["methods"]["sft_am"] = {**sft, "max_steps": 2, "save_steps": 2}
    sft["stages"] = [
        {"name": STAGE, "max_steps": 3, "resources": {"cpus_per_task": 1, "mem_mb": 3000}}
    ]
    sft["accept_unhealthy"] = [STAGE]  # three steps judge nothing; the stage is tracked
    config["tracking"] = {"wandb": WANDB}
    config["grid"] = [
        {"models": ["tiny"], "methods": ["sft"], "datasets": ["secure_code"], "seeds": [SEED]},
        {
            "models": ["tiny_hybrid"],
            "methods": ["sft_am"],
            "datasets": ["secure_code"],
            "seeds": [SEED],
        },
    ]
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Both runs trained by the workflow, with the API key in the environment."""
    work = copy_workflow(tmp_path_factory.mktemp("tracking") / "ftflow")
    write_config(work, _config())
    snakemake(
        work,
        str(TRL.final),
        str(AUTOMODEL.final),
        "--cores",
        "2",
        env={"WANDB_API_KEY": API_KEY},
        timeout=1200,
    )
    return work


def _scalars(folder: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def _records(path: Path):
    """The protobuf records of a ``.wandb`` file: W&B's 7-byte header, then a LevelDB log
    (32 KiB blocks; each chunk: crc32, length, type — full, first, middle, last)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    position, pending = 7, b""
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        if room < 7:  # block trailer
            position += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending += chunk
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _wandb_run(folder: Path) -> tuple[object, dict[int, dict[str, float]]]:
    """The run record and the history (step → scalars) of a wandb/ folder's one run."""
    runs = tracking.offline_runs([folder])
    assert len(runs) == 1, runs
    (file,) = runs[0].glob("*.wandb")
    run, history = None, {}
    for record in _records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "history":
            items = {
                i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in record.history.item
            }
            history.setdefault(int(items["_step"]), {}).update(
                {k: v for k, v in items.items() if k.startswith("train/")}
            )
    return run, history


# ------------------------------------------------------------------ TensorBoard


def test_tensorboard_events_hold_the_metrics_rows(trained: Path):
    for run in (TRL, AUTOMODEL, paths.RunPaths(TRL.run, STAGE)):
        rows = read_jsonl(trained / run.metrics)
        assert rows, run
        for key in ("loss", "learning_rate", "grad_norm"):
            logged = _scalars(trained / run.tensorboard, f"train/{key}")
            assert logged == pytest.approx({r["step"]: r[key] for r in rows}, rel=1e-6), (run, key)


def test_a_resumed_tracker_shows_each_step_once(trained: Path, tmp_path: Path, monkeypatch):
    """Attempt one logs steps 1-5 and is killed; attempt two resumes the checkpoint of
    step 3 and logs 4-6 again: TensorBoard shows 1-6 once, steps 4-5 from attempt two;
    W&B continues the same run id and writes only the steps it had not."""
    work = tmp_path / "ftflow"
    shutil.copytree(trained, work, symlinks=True)
    monkeypatch.chdir(work)
    # What the Snakefile exports to every job (tracking settings are not in run.yaml).
    monkeypatch.setenv(tracking.ENV, json.dumps(resolve_tracking(validate(_config()))))
    run = spec.load(TRL.run_config)
    shutil.rmtree(TRL.tensorboard)
    shutil.rmtree(TRL.wandb)
    with tracking.open_tracker(run, 0, main=True) as tracker:
        tracker.log_rows({"step": s, "loss": 10.0 + s} for s in range(1, 6))
    first_id = json.loads((TRL.checkpoints / tracking.STATE_FILE).read_text())["wandb_id"]
    with tracking.open_tracker(run, 3, main=True) as tracker:
        tracker.log_rows({"step": s, "loss": 20.0 + s} for s in range(4, 7))
    state = json.loads((TRL.checkpoints / tracking.STATE_FILE).read_text())
    assert _scalars(TRL.tensorboard, "train/loss") == {
        1: 11.0, 2: 12.0, 3: 13.0, 4: 24.0, 5: 25.0, 6: 26.0
    }  # fmt: skip
    assert state == {"wandb_id": first_id, "wandb_step": 6}
    offline = tracking.offline_runs([TRL.wandb])
    assert [p.name.rsplit("-", 2)[-2:] for p in offline] == [first_id.split("-")] * 2
    # a fresh start (the checkpoints were discarded) is another W&B run
    with tracking.open_tracker(run, 0, main=True) as tracker:
        tracker.log({"step": 1, "loss": 1.0})
    assert json.loads((TRL.checkpoints / tracking.STATE_FILE).read_text())["wandb_id"] != first_id
    assert _scalars(TRL.tensorboard, "train/loss") == {1: 1.0}


# ---------------------------------------------------------------------- W&B


def test_wandb_offline_runs_carry_identity_and_metrics(trained: Path):
    for run, stage in ((TRL, None), (paths.RunPaths(TRL.run, STAGE), STAGE), (AUTOMODEL, None)):
        record, history = _wandb_run(trained / run.wandb)
        r = run.run
        name = str(r) + (f"/sanity/{stage}" if stage else "")
        tags = [r.model, r.method, r.dataset, f"seed{r.seed}"] + (
            [f"sanity:{stage}"] if stage else []
        )
        assert record.display_name == name
        assert list(record.tags) == tags
        assert (record.project, record.entity) == (WANDB["project"], WANDB["entity"])
        state = json.loads((trained / run.checkpoints / tracking.STATE_FILE).read_text())
        assert record.run_id == state["wandb_id"]
        rows = read_jsonl(trained / run.metrics)
        logged = {s: h["train/loss"] for s, h in history.items() if h}  # a row of metrics
        assert logged == pytest.approx({row["step"]: row["loss"] for row in rows})


def test_the_api_key_is_in_no_file(trained: Path):
    leaked = [
        str(path)
        for part in ("results", "logs", ".snakemake", "resources")
        for path in (trained / part).rglob("*")
        if path.is_file() and not path.is_symlink() and API_KEY.encode() in path.read_bytes()
    ]
    assert not leaked


# --------------------------------------------------------------------- sync


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_sync_to_an_unreachable_endpoint_fails_clearly_and_keeps_everything(trained: Path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    folders = [
        trained / TRL.wandb,
        trained / paths.RunPaths(TRL.run, STAGE).wandb,
        trained / AUTOMODEL.wandb,
    ]
    before = {str(f): _digest(f) for f in folders}
    proc = snakemake(
        trained,
        "--cores",
        "1",
        "sync_tracking",
        check=False,
        env={
            "WANDB_API_KEY": API_KEY,
            "WANDB_BASE_URL": endpoint,
            "WANDB__GRAPHQL_RETRY_MAX": "1",  # wandb's own retries: one, a second apart
            "WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS": "1",
        },
        timeout=300,
    )
    assert proc.returncode != 0
    log = (trained / paths.log("sync_tracking", "wandb")).read_text()
    assert f"wandb sync to {endpoint} failed after 3 attempt(s)" in log
    assert "retry 2 of 2" in log
    assert "connection refused" in log
    for run in tracking.offline_runs(folders):
        assert str(run.relative_to(trained)) in log
    assert {str(f): _digest(f) for f in folders} == before
    assert not (trained / paths.TRACKING_SYNCED).exists()
    assert "train" not in proc.stderr.split("Job stats:")[-1].split()  # nothing retrained
    assert API_KEY not in log


def test_sync_needs_the_key_from_the_environment(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    with pytest.raises(tracking.SyncError, match="WANDB_API_KEY is not set"):
        tracking.sync([tmp_path], 0, 0, 5)


def test_sync_refuses_a_config_without_offline_wandb(tmp_path: Path):
    with pytest.raises(tracking.SyncError, match=r"tracking\.wandb.*allowed: tracking\.wandb"):
        tracking.sync_main([], {}, tmp_path / "synced.json")
    with pytest.raises(tracking.SyncError, match="mode is online"):
        tracking.sync_main([], {"mode": "online"}, tmp_path / "synced.json")


def test_wandb_is_imported_only_when_configured():
    import subprocess
    import sys

    code = (
        "import sys, ftflow.lifecycle, ftflow.tracking, ftflow.backends.trl.callbacks; "
        "print('wandb' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}
    )
    assert out.stdout.strip() == "False", out.stderr


def test_tensorboard_off_and_wandb_disabled_write_nothing(trained: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = spec.load(trained / TRL.run_config).raw
    raw["tracking"] = {"tensorboard": False, "wandb": {"project": "p", "mode": "disabled"}}
    with tracking.open_tracker(spec.from_dict(raw), 0, main=True) as tracker:
        tracker.log({"step": 1, "loss": 1.0})
    assert not list(tmp_path.rglob("*"))
