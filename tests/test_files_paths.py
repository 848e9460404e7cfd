"""Shared helpers: JSON lines read back exactly, the run parser, the one reader of final/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from ftflow import files, final, paths

TRICKY = "a\u0085b\u2028c\u2029d\re\x0bf\x1cg \U0001f600 \u00e9"


def test_jsonl_reads_back_every_character(tmp_path: Path):
    rows = [{"answer": TRICKY, "n": 1}, {"answer": "plain", "q": TRICKY}]
    out = files.write_jsonl(rows, tmp_path / "rows.jsonl")
    assert files.read_jsonl(out) == rows
    assert "\u0085" in out.read_text(encoding="utf-8")  # written as itself, not escaped
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind


def test_atomic_dir_leaves_the_old_folder_when_building_fails(tmp_path: Path):
    dest = tmp_path / "final"
    dest.mkdir()
    (dest / "old").write_text("old")
    with pytest.raises(RuntimeError), files.atomic_dir(dest) as tmp:
        (tmp / "new").write_text("new")
        raise RuntimeError("export failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    assert (dest / "old").read_text() == "old"
    with files.atomic_dir(dest) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["new"]


def test_run_paths_and_the_parser_agree():
    run = paths.RunPaths.of("m", "lora", "d", 42)
    for path in (
        run.final,
        run.metrics,
        run.checkpoints / "checkpoint-3",
        run.sanity("one_gpu") / "verdict.json",
        run.eval_dir("em") / "summary.csv",
        run.log("train"),
        run.benchmark("train"),
        Path("/elsewhere") / run.metrics,
    ):
        assert paths.parse_run(path) == run.run, path
    with pytest.raises(ValueError, match="not inside a run directory"):
        paths.parse_run("results/report/runs.csv")


def _model(folder: Path, adapter: bool, tokenizer: bool) -> Path:
    folder.mkdir(parents=True)
    name = "adapter_config.json" if adapter else "config.json"
    (folder / name).write_text(json.dumps({"base_model_name_or_path": "tiny"}))
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def test_final_reader(tmp_path: Path):
    base = _model(tmp_path / "base", adapter=False, tokenizer=True)
    full = final.read(base, _model(tmp_path / "full", adapter=False, tokenizer=True))
    assert (full.weights, full.adapter, full.tokenizer) == (
        tmp_path / "full",
        None,
        tmp_path / "full",
    )
    lora = final.read(base, _model(tmp_path / "lora", adapter=True, tokenizer=False))
    assert (lora.weights, lora.adapter, lora.tokenizer) == (base, tmp_path / "lora", base)
    assert lora.base_name == "tiny"
    assert final.read(base).weights == base
    with pytest.raises(final.FinalModelError, match="neither a model"):
        final.read(base, (tmp_path / "empty").mkdir() or tmp_path / "empty")


def test_a_job_refuses_another_checkout_of_ftflow(tmp_path: Path):
    """A second copy of ftflow on the path must not silently run instead of the workflow's."""
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "copy")}
    copy = tmp_path / "copy" / "ftflow"  # same files, another folder first on the path
    shutil.copytree(REPO / "src" / "ftflow", copy, ignore=shutil.ignore_patterns("__pycache__"))
    env["FTFLOW_CODE"] = str(REPO / "src" / "ftflow")
    proc = subprocess.run(
        [sys.executable, "-c", "import ftflow"], env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert str(copy) in proc.stderr and str(REPO / "src" / "ftflow") in proc.stderr
    env["FTFLOW_CODE"] = str(copy)
    ok = subprocess.run([sys.executable, "-c", "import ftflow"], env=env, capture_output=True)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
def test_jobs_run_the_code_of_the_checkout_that_runs_snakemake(tmp_path: Path):
    """A clone beside the installed (editable) ftflow: its jobs import the clone's own src/."""
    from conftest import copy_workflow, load_default_config, snakemake, write_config

    clone = copy_workflow(tmp_path / "clone")
    shutil.copytree(REPO / "src", clone / "src", ignore=shutil.ignore_patterns("__pycache__"))
    config = load_default_config()
    config.pop("evaluations")
    config["methods"]["sft"]["max_steps"] = 2
    config["grid"] = [
        {"models": ["tiny"], "methods": ["sft"], "datasets": ["secure_code"], "seeds": [1]}
    ]
    write_config(clone, config)
    run = paths.RunPaths.of("tiny", "sft", "secure_code", 1)
    # a value inherited from another workflow's Snakemake does not decide for this one
    inherited = {"FTFLOW_CODE": str(REPO / "src" / "ftflow")}
    snakemake(clone, str(run.final), "--cores", "1", env=inherited)
    log = (clone / run.log("train")).read_text()
    assert f"[ftflow] code: {(clone / 'src' / 'ftflow').resolve()}" in log, log[:2000]
