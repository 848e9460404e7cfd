"""Training: determinism, resume after SIGKILL, NaN stop, the metrics contract."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import copy_workflow, kill_mid_run, load_default_config, snakemake, write_config
from safetensors.torch import load_file

from ftflow import paths, train

pytestmark = pytest.mark.slow


def _one_run_config(method: str, dataset: str, **overrides) -> dict:
    config = load_default_config()
    config["methods"][method].update(overrides)
    config["grid"] = [
        {"models": ["tiny"], "methods": [method], "datasets": [dataset], "seeds": [7]}
    ]
    if config["methods"][method]["kind"] == "dpo":
        parent = config["methods"][method]["parent"]
        config["grid"].append(
            {
                "models": ["tiny"],
                "methods": [parent["method"]],
                "datasets": [parent["dataset"]],
                "seeds": [7],
            }
        )
    return config


def _weights(final: Path) -> dict:
    name = (
        "adapter_model.safetensors"
        if (final / "adapter_config.json").exists()
        else ("model.safetensors")
    )
    return load_file(final / name)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def _long_sft_config(**overrides) -> dict:
    """One run of 48 steps, checkpointing every 8."""
    config = _one_run_config("sft", "secure_code", max_steps=48, save_steps=8, epochs=1)
    config["methods"]["sft"]["per_device_batch_size"] = 1  # slower steps: time to kill
    config["methods"]["sft"].update(overrides)
    return config


@pytest.fixture(scope="module")
def long_sft(tmp_path_factory) -> Path:
    """A workdir ready to train the run of :func:`_long_sft_config`."""
    work = copy_workflow(tmp_path_factory.mktemp("long") / "ftflow")
    write_config(work, _long_sft_config())
    target = str(paths.run_config("tiny", "sft", "secure_code", 7))
    snakemake(work, target, "--cores", "2")
    snakemake(work, str(paths.prepared("tiny", "secure_code")), "--cores", "2")
    return work


def _train(work: Path) -> subprocess.CompletedProcess:
    run_yaml = paths.run_config("tiny", "sft", "secure_code", 7)
    return subprocess.run(
        [sys.executable, "-m", "ftflow.train", str(run_yaml)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def straight(long_sft: Path, tmp_path_factory) -> Path:
    """The run of :func:`_long_sft_config` trained once without interruption."""
    work = tmp_path_factory.mktemp("straight") / "ftflow"
    shutil.copytree(long_sft, work)
    proc = _train(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work


def test_same_seed_gives_same_weights(straight: Path, tmp_path: Path):
    """Trained again, from scratch (a finished training is never resumed: that is what
    `--forcerun` asks for), the weights are bit-identical."""
    work = tmp_path / "twice"
    shutil.copytree(straight, work)
    final = paths.final_dir("tiny", "sft", "secure_code", 7)
    proc = _train(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the previous training of this run finished" in proc.stdout, proc.stdout
    assert "starting from scratch" in proc.stdout and "resuming" not in proc.stdout
    assert _same(_weights(work / final), _weights(straight / final))


def _kill_mid_run(work: Path, after_step: int = 16) -> int:
    return kill_mid_run(work, paths.final_dir("tiny", "sft", "secure_code", 7), after_step)


def test_sigkill_then_resume_matches_uninterrupted(long_sft: Path, straight: Path, tmp_path):
    work = tmp_path / "killed"
    shutil.copytree(long_sft, work)
    final = paths.final_dir("tiny", "sft", "secure_code", 7)
    killed_at = _kill_mid_run(work)
    assert killed_at < 48

    snakemake(work, str(final), "--cores", "1", "--rerun-incomplete")
    log = (work / paths.train_log("tiny", "sft", "secure_code", 7)).read_text()
    resumed = int(log.split("resuming from checkpoint-")[1].split()[0])
    assert resumed >= killed_at
    assert _same(_weights(work / final), _weights(straight / final))
    steps = [
        json.loads(x)["step"]
        for x in (work / paths.metrics_file("tiny", "sft", "secure_code", 7))
        .read_text()
        .splitlines()
    ]
    assert steps == list(range(1, 49)), "metrics must hold each step exactly once"


def test_checkpoints_of_another_config_are_never_resumed(long_sft: Path, tmp_path: Path):
    """Killed mid-run, then the learning rate is changed: the rerun must not resume from
    checkpoints trained at the old rate, and ends as an uninterrupted run at the new one."""
    final = paths.final_dir("tiny", "sft", "secure_code", 7)
    changed = _long_sft_config(learning_rate=0.001)

    work = tmp_path / "killed"
    shutil.copytree(long_sft, work)
    _kill_mid_run(work, after_step=8)
    write_config(work, changed)
    snakemake(work, str(final), "--cores", "1", "--rerun-incomplete")
    log = (work / paths.train_log("tiny", "sft", "secure_code", 7)).read_text()
    assert "they were made from another config" in log, log[-3000:]
    assert "resuming" not in log

    straight = tmp_path / "straight"
    shutil.copytree(long_sft, straight)
    write_config(straight, changed)
    snakemake(straight, str(final), "--cores", "1")
    assert _same(_weights(work / final), _weights(straight / final))


def test_nan_loss_stops_training(long_sft: Path, tmp_path: Path):
    import torch
    from safetensors.torch import save_file

    work = tmp_path / "nan"
    shutil.copytree(long_sft, work)
    weights_file = work / paths.model_dir("tiny") / "model.safetensors"
    weights = load_file(weights_file)
    name = next(k for k in weights if "embed_tokens" in k)
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, weights_file, metadata={"format": "pt"})
    proc = _train(work)
    assert proc.returncode != 0
    assert "loss is nan at step 1" in proc.stderr
    assert not (work / paths.final_dir("tiny", "sft", "secure_code", 7)).exists()


def test_missing_prefetch_names_the_target(long_sft: Path, tmp_path: Path):
    work = tmp_path / "missing"
    shutil.copytree(long_sft, work)
    shutil.rmtree(work / paths.model_dir("tiny"))
    proc = _train(work)
    assert proc.returncode != 0
    assert "not prefetched" in proc.stderr and "resources/models/tiny" in proc.stderr


@pytest.mark.parametrize("method,dataset", [("lora", "secure_code"), ("dpo", "secure_code_pref")])
def test_every_method_logs_the_same_keys(tmp_path: Path, method: str, dataset: str):
    work = copy_workflow(tmp_path / "ftflow")
    write_config(work, _one_run_config(method, dataset, max_steps=3))
    snakemake(work, str(paths.metrics_file("tiny", method, dataset, 7)), "--cores", "2")
    rows = [
        json.loads(x)
        for x in (work / paths.metrics_file("tiny", method, dataset, 7)).read_text().splitlines()
    ]
    expected = set(train.metric_keys("dpo" if method == "dpo" else "sft"))
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert set(row) == expected
        assert all(row[k] is not None for k in expected)
        assert row["tokens_per_second"] > 0


def test_batch_is_derived_and_recorded(tmp_path: Path):
    work = copy_workflow(tmp_path / "ftflow")
    config = _one_run_config("sft", "secure_code", global_batch_size=12, per_device_batch_size=3)
    config["methods"]["sft"]["resources"]["cpu_processes"] = 2
    write_config(work, config)
    target = paths.run_config("tiny", "sft", "secure_code", 7)
    snakemake(work, str(target), "--cores", "1")
    import yaml

    batch = yaml.safe_load((work / target).read_text())["batch"]
    assert batch == {
        "global_batch_size": 12,
        "per_device_batch_size": 3,
        "gradient_accumulation_steps": 2,
        "processes": 2,
    }


def test_two_process_ddp_on_cpu(tmp_path: Path):
    """torchrun with 2 CPU processes: the global batch splits over both, steps logged once."""
    work = copy_workflow(tmp_path / "ftflow")
    config = _one_run_config("sft", "secure_code", distributed="ddp", max_steps=4)
    config["methods"]["sft"]["resources"].update(cpu_processes=2, cpus_per_task=1)
    write_config(work, config)
    snakemake(work, str(paths.final_dir("tiny", "sft", "secure_code", 7)), "--cores", "2")
    log = (work / paths.train_log("tiny", "sft", "secure_code", 7)).read_text()
    assert "rank 0 of 2" in log and "rank 1 of 2" in log  # both processes ran
    assert log.count("starting from scratch") == 1  # rank 0 alone prepares the run
    rows = (work / paths.metrics_file("tiny", "sft", "secure_code", 7)).read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3, 4]
