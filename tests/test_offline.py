"""Tests for ftflow.offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftflow.offline import (
    OFFLINE_ENV,
    NotPrefetchedError,
    apply_offline,
    offline_env,
    require_prefetched,
)


def test_require_prefetched_names_the_target(tmp_path: Path) -> None:
    missing = tmp_path / "resources" / "models" / "tiny"
    target = "resources/models/tiny"
    with pytest.raises(NotPrefetchedError) as info:
        require_prefetched(missing, "base model org/tiny", target)
    message = str(info.value)
    assert message.startswith("base model org/tiny not prefetched:")
    assert str(missing) in message
    assert f"snakemake --cores 1 {target}" in message
    assert "login node" in message
    assert isinstance(info.value, FileNotFoundError)
    assert info.value.target == target and info.value.path == missing


def test_require_prefetched_present_and_empty(tmp_path: Path) -> None:
    f = tmp_path / "train.jsonl"
    f.write_text("{}\n")
    assert require_prefetched(f, "dataset", "resources/data/train.jsonl") == f

    empty = tmp_path / "model"
    empty.mkdir()
    with pytest.raises(NotPrefetchedError, match="empty directory"):
        require_prefetched(empty, "model", "resources/models/model")
    (empty / "config.json").write_text("{}")
    assert require_prefetched(str(empty), "model", "resources/models/model") == empty


def test_offline_env_keeps_caches_inside_resources(tmp_path: Path) -> None:
    resources = tmp_path / "resources"
    env = offline_env(resources)
    for key, value in OFFLINE_ENV.items():
        assert env[key] == value
    assert set(OFFLINE_ENV) == {"HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"}
    assert Path(env["HF_HOME"]) == resources / "hf_home"
    assert Path(env["HF_DATASETS_CACHE"]) == resources / "hf_home" / "datasets"
    for key in ("HF_HOME", "HF_DATASETS_CACHE"):
        assert Path(env[key]).is_absolute()
        assert Path(env[key]).is_relative_to(resources)


def test_offline_env_relative_resources_become_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    env = offline_env("resources")
    assert env["HF_HOME"] == str(tmp_path / "resources" / "hf_home")


def test_apply_offline_sets_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in offline_env(tmp_path):
        monkeypatch.delenv(key, raising=False)  # restored after the test
    for name in ("huggingface_hub", "transformers", "datasets"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    env = apply_offline(tmp_path)
    assert {k: os.environ[k] for k in env} == env == offline_env(tmp_path)


def test_apply_offline_warns_after_hf_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in offline_env(tmp_path):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setitem(sys.modules, "transformers", sys)  # any module object will do
    with pytest.warns(RuntimeWarning, match="before those imports"):
        apply_offline(tmp_path)


def test_apply_offline_reaches_huggingface_libraries(tmp_path: Path) -> None:
    """In a fresh process, as in a job script: apply first, then import."""
    code = """
import json, sys
from ftflow.offline import apply_offline
apply_offline(sys.argv[1])
from huggingface_hub import constants
import datasets.config
print(json.dumps({
    "hub_offline": constants.is_offline_mode(),
    "hub_cache": constants.HF_HUB_CACHE,
    "datasets_offline": datasets.config.HF_HUB_OFFLINE,
    "datasets_cache": str(datasets.config.HF_DATASETS_CACHE),
}))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    resources = tmp_path / "resources"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(resources)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["hub_offline"] is True
    assert seen["datasets_offline"] is True
    assert Path(seen["hub_cache"]).is_relative_to(resources)
    assert Path(seen["datasets_cache"]) == resources / "hf_home" / "datasets"
