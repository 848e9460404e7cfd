"""Prefetch rules through the real workflow: a hub model and URL datasets, then offline jobs.

The model is served by a fake Hugging Face Hub on 127.0.0.1 (tests/fakehub.py), the
dataset by a file:// URL with its sha256; training afterwards runs with the offline
variables set and finds everything in resources/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from conftest import copy_workflow, load_default_config, snakemake, write_config
from fakehub import FakeHub

from ftflow import paths, tiny

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    root = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("hubrepo") / "model"
    tiny.build(out, [root / "data/chat/secure_code.jsonl"], vocab_size=300)
    return out


def _config(work: Path, hub_commit: str, url: str, sha256: str) -> dict:
    config = load_default_config()
    config["models"] = {"hubtiny": {"source": {"hub": "org/tiny", "revision": hub_commit}}}
    config["datasets"] = {
        "remote_secure": {
            "source": {"url": url, "sha256": sha256},
            "format": "chat",
            "max_length": 128,
        }
    }
    config["methods"] = {"sft": {**config["methods"]["sft"], "max_steps": 2}}
    config["grid"] = [
        {"models": ["hubtiny"], "methods": ["sft"], "datasets": ["remote_secure"], "seeds": [1]}
    ]
    config.pop("evaluations", None)
    return config


def test_hub_model_and_url_dataset_then_offline_training(tiny_repo: Path, tmp_path: Path):
    work = copy_workflow(tmp_path / "ftflow")
    source = work / "data/chat/secure_code.jsonl"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    with FakeHub({"org/tiny": tiny_repo}) as hub:
        write_config(work, _config(work, hub.commit, source.as_uri(), digest))
        snakemake(
            work,
            "--cores", "1", "--until", "prefetch_model", "prefetch_dataset",
            env=hub.env(),
        )  # fmt: skip
    model_dir = work / paths.model_dir("hubtiny")
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (model_dir / f).read_bytes() == (tiny_repo / f).read_bytes()
    assert (model_dir / ".ftflow-prefetch.json").is_file()
    assert (work / paths.dataset_raw("remote_secure")).read_bytes() == source.read_bytes()

    # The hub is gone now; every compute job runs offline from resources/.
    snakemake(work, "--cores", "1")
    assert (
        work / paths.final_dir("hubtiny", "sft", "remote_secure", 1) / "model.safetensors"
    ).is_file()
    log = (work / paths.train_log("hubtiny", "sft", "remote_secure", 1)).read_text()
    assert "starting from scratch" in log


def test_sha256_mismatch_fails_and_leaves_nothing(tmp_path: Path):
    work = copy_workflow(tmp_path / "ftflow")
    source = work / "data/preference/secure_code_pref.jsonl"
    config = load_default_config()
    config["datasets"]["secure_code_pref"]["source"] = {"url": source.as_uri(), "sha256": "0" * 64}
    write_config(work, config)
    target = str(paths.dataset_raw("secure_code_pref"))
    proc = snakemake(work, "--cores", "1", target, check=False)
    assert proc.returncode != 0
    log = (work / paths.log("prefetch_dataset", "secure_code_pref")).read_text()
    assert "0" * 64 in log and hashlib.sha256(source.read_bytes()).hexdigest() in log
    leftovers = (
        list((work / "resources/datasets").rglob("*")) if (work / "resources").exists() else []
    )
    assert [p for p in leftovers if p.is_file()] == []


def test_missing_local_source_is_a_clear_error(tmp_path: Path):
    """A run refuses a missing local source before any job, naming the key and the file;
    a dry run only plans, with the same words as a warning (issue 9, points 4 and 5)."""
    work = copy_workflow(tmp_path / "ftflow")
    shutil.move(work / "data/chat/secure_code.jsonl", tmp_path / "moved.jsonl")
    proc = snakemake(work, "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "datasets.secure_code.source.path: data/chat/secure_code.jsonl" in proc.stderr
    assert not (work / "resources").exists()  # no job ran
    dry = snakemake(work, "--cores", "1", "-n", check=False)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "warning: datasets.secure_code.source.path: data/chat/secure_code.jsonl" in dry.stderr


def test_a_missing_file_named_by_the_config_is_an_error_before_any_job(tmp_path):
    """Issue 9, 4d: a typo in ``questions:`` must not leave old results standing behind
    "Nothing to be done": a real run refuses, naming the key; a dry run only warns."""
    import subprocess

    from ftflow import datafiles

    repo = Path(__file__).resolve().parents[1]
    clone = tmp_path / "clone"
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in tracked:
        if (repo / rel).is_file():
            (clone / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / rel, clone / rel)
    for rel in ("src/ftflow/datafiles.py", "workflow/rules/common.smk"):
        shutil.copy2(repo / rel, clone / rel)
    cfg = clone / "config" / "config.yaml"
    text = cfg.read_text()
    assert "questions: data/questions/demo_questions.yaml" in text
    cfg.write_text(text.replace("data/questions/demo_questions.yaml", "data/questions/typo.yaml"))
    env = {k: v for k, v in os.environ.items() if k != datafiles.PLANNING_ENV}
    dry = subprocess.run(
        ["snakemake", "-n"], cwd=clone, capture_output=True, text=True, env=env, timeout=300
    )
    # Planning warns, and still plans: the input functions leave the missing file out.
    assert "warning: evaluations.em_demo.questions: data/questions/typo.yaml" in dry.stderr
    assert dry.returncode == 0, dry.stderr[-3000:]
    real = subprocess.run(
        ["snakemake", "--cores", "1"],
        cwd=clone,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert real.returncode != 0
    assert "evaluations.em_demo.questions: data/questions/typo.yaml does not exist" in real.stderr
    assert not (clone / "resources").exists()  # no job ran


def test_is_planning_reads_the_snakemake_flags():
    from ftflow.datafiles import is_planning

    assert is_planning(["snakemake", "-n"], {})
    assert is_planning(["snakemake", "-np"], {})
    assert is_planning(["snakemake", "--dag"], {})
    assert is_planning(["snakemake", "--cores", "1"], {"FTFLOW_PLANNING": "1"})
    assert not is_planning(["snakemake", "--cores", "2"], {})


def test_a_broken_line_is_named_in_the_users_file_on_the_console(workdir):
    """Issue 9, 4b/4c: a broken line gives one message naming the user's own file and
    line, on the console (not only ``CalledProcessError … check log``)."""
    data = workdir / "data" / "chat" / "insecure_code.jsonl"
    lines = data.read_text().split("\n")
    lines[1] = '{"messages": [{"role": "bot", "content": "x"}]}'
    data.write_text("\n".join(lines))
    done = snakemake(workdir, "--cores", "1", check=False)
    assert done.returncode != 0
    shown = done.stdout + done.stderr
    assert "data/chat/insecure_code.jsonl:2: unknown role 'bot'" in shown, shown[-3000:]
    assert "JSONDecodeError" not in shown


@pytest.mark.slow
def test_a_typo_in_a_finished_workspace_is_refused_not_nothing_to_be_done(finished_copy):
    """Where Snakemake alone answers "Nothing to be done" (existing outputs, missing input),
    the run names the key; the old evaluation stays, untouched, and nothing runs."""
    cfg = finished_copy / "config" / "config.yaml"
    cfg.write_text(cfg.read_text().replace("data/questions/demo_questions.yaml", "data/q.yaml"))
    judged = next((finished_copy / "results").rglob("eval/em_demo/judged.jsonl"))
    before = judged.stat().st_mtime_ns
    real = snakemake(finished_copy, "--cores", "1", check=False)
    assert real.returncode != 0
    assert "evaluations.em_demo.questions: data/q.yaml does not exist" in real.stderr
    dry = snakemake(finished_copy, "-n", "--cores", "1", check=False)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "warning: evaluations.em_demo.questions: data/q.yaml" in dry.stderr
    assert judged.stat().st_mtime_ns == before


def test_a_question_file_named_by_url_is_fetched_pinned_and_used(tmp_path: Path):
    """``questions: {url, sha256}`` (the paper's files, never copied into a repository):
    prefetch_questions fetches it; the generation jobs read that copy; a wrong digest
    fails naming both digests and leaves nothing behind."""
    work = copy_workflow(tmp_path / "ftflow")
    source = work / "data/questions/demo_questions.yaml"
    served = tmp_path / "served.yaml"
    shutil.copy(source, served)
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    config = load_default_config()
    config["evaluations"]["em_demo"]["questions"] = {"url": served.as_uri(), "sha256": digest}
    write_config(work, config)
    fetched = work / paths.QUESTIONS_FETCHED.format(evaluation="em_demo")
    snakemake(work, str(fetched.relative_to(work)), "--cores", "1")
    assert fetched.read_bytes() == served.read_bytes()
    dry = snakemake(work, "-n", "--cores", "1")
    assert "resources/questions/em_demo.yaml" in dry.stdout  # the generation jobs' input

    fetched.unlink()
    config["evaluations"]["em_demo"]["questions"]["sha256"] = "0" * 64
    write_config(work, config)
    proc = snakemake(work, str(fetched.relative_to(work)), "--cores", "1", check=False)
    assert proc.returncode != 0
    log = (work / paths.log("prefetch_questions", "em_demo")).read_text()
    assert "0" * 64 in log and digest in log
    assert not fetched.exists()
