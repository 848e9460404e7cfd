"""The embedded default, end to end through the real snakemake CLI, on a CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import load_default_config, snakemake, write_config

from ftflow import config as ftconfig
from ftflow import paths

pytestmark = pytest.mark.slow

DEFAULT = ftconfig.validate(load_default_config())
RUNS = ftconfig.runs(DEFAULT)


def _mtimes(root: Path) -> dict[str, float]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and ".snakemake" not in p.parts
    }


def test_default_run_produces_every_run(default_run: Path):
    assert len(RUNS) == 12  # TRL: 8 SFT/LoRA + 2 DPO; Automodel: SFT + LoRA of tiny_hybrid
    for run in RUNS:
        d = default_run / paths.run_dir(**run.wildcards)
        assert (d / "run.yaml").is_file()
        assert (d / "final" / "ftflow.json").is_file()
        kind = DEFAULT["methods"][run.method]["kind"]
        weights = "adapter_model.safetensors" if kind == "lora" else "model.safetensors"
        assert (d / "final" / weights).is_file(), run
        lines = (d / "metrics.jsonl").read_text().splitlines()
        steps = [json.loads(line)["step"] for line in lines]
        assert steps == list(range(1, len(steps) + 1)), run  # one line per logged step
        resolved = yaml.safe_load((d / "run.yaml").read_text())
        assert resolved["run"] == {**run.wildcards, "seed": run.seed}


def test_report_aggregates_every_run(default_run: Path):
    table = pd.read_csv(default_run / paths.REPORT_RUNS)
    assert len(table) == len(RUNS)
    assert set(zip(table.model, table.method, table.dataset, table.seed, strict=True)) == {
        (r.model, r.method, r.dataset, r.seed) for r in RUNS
    }
    # Training works: the loss falls for every run.
    assert (table.final_loss < table.first_loss).all(), table
    for cell in ftconfig.iter_cells(DEFAULT):
        png = default_run / paths.report_loss(*cell)
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_report_registers_outputs(default_run: Path, tmp_path: Path):
    work = tmp_path / "w"
    shutil.copytree(default_run, work)
    snakemake(work, "--report", "report.html")
    html = (work / "report.html").read_text(errors="replace")
    assert "runs.csv" in html and "tiny__sft__secure_code.png" in html


def test_rerun_with_nothing_changed_does_nothing(finished_copy: Path):
    proc = snakemake(finished_copy, "--cores", "2", "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_forcerun_one_seed_leaves_siblings_untouched(finished_copy: Path):
    target = paths.final_dir("tiny", "sft", "insecure_code", 1)
    before = _mtimes(finished_copy)
    proc = snakemake(finished_copy, "--cores", "2", "--forcerun", str(target))
    after = _mtimes(finished_copy)
    changed = {p for p in before if before[p] != after.get(p)}
    run = str(paths.run_dir("tiny", "sft", "insecure_code", 1))
    own = "tiny/sft/insecure_code/seed1"
    shared = ("results/report/", "logs/report/", "logs/compare_runs/", "logs/compare_lm_eval/")
    # Only that run (its training, evaluations, logs) and the cross-run reports changed.
    for path in changed:
        assert f"/{own}/" in f"/{path}" or f"/{own}." in path or path.startswith(shared), (
            f"{path} changed, but it belongs to another run"
        )
    assert f"{run}/final/model.safetensors" in changed
    assert "results/report/runs.csv" in changed
    log = proc.stdout + proc.stderr
    assert log.count("rule train:") == 1


def test_adding_a_seed_trains_only_the_new_seed(finished_copy: Path):
    """Seed 3 added to one cell of the grid: its run trains (and is evaluated), and
    nothing of the finished runs is rewritten."""
    config = load_default_config()
    config["grid"].append(
        {"models": ["tiny"], "methods": ["sft"], "datasets": ["secure_code"], "seeds": [3]}
    )
    write_config(finished_copy, config)
    plan = snakemake(finished_copy, "--cores", "2", "-n", "--quiet", "rules")
    before = _mtimes(finished_copy)
    snakemake(finished_copy, "--cores", "2")
    after = _mtimes(finished_copy)
    assert "train" in plan.stdout
    trained = sorted({p.split("/final/")[0] for p in after if "/final/" in p and p not in before})
    assert trained == [str(paths.run_dir("tiny", "sft", "secure_code", 3))]
    for path, mtime in before.items():
        if path.startswith("results/tiny/"):
            assert after[path] == mtime, f"{path} was rewritten"


def test_editing_raw_data_rebuilds_its_cache(finished_copy: Path):
    raw = finished_copy / "data/chat/secure_code.jsonl"
    lines = raw.read_text().splitlines()
    raw.write_text("\n".join(lines[:-1]) + "\n")  # drop one record, in place
    proc = snakemake(finished_copy, "--cores", "2", "-n")
    out = proc.stdout
    assert "rule prepare_dataset:" in out
    manifest_before = json.loads(
        (finished_copy / paths.prepared("tiny", "secure_code")).read_text()
    )
    snakemake(finished_copy, "--cores", "2", "--until", "prepare_dataset")
    manifest = json.loads((finished_copy / paths.prepared("tiny", "secure_code")).read_text())
    assert manifest["key"] != manifest_before["key"]
    assert manifest["n_records"] == manifest_before["n_records"] - 1


def test_trainer_writes_only_inside_its_run_dir(finished_copy: Path):
    target = paths.final_dir("tiny", "lora", "secure_code", 2)
    before = _mtimes(finished_copy)
    snakemake(finished_copy, str(target), "--cores", "1", "--forcerun", str(target))
    after = _mtimes(finished_copy)
    written = {p for p in after if before.get(p) != after[p]}
    allowed = (
        str(paths.run_dir("tiny", "lora", "secure_code", 2)) + "/",
        "logs/train/tiny/lora/secure_code/seed2",
        "benchmarks/train/tiny/lora/secure_code/seed2",
    )
    assert written, "nothing was retrained"
    assert all(p.startswith(allowed) for p in written), sorted(written)


def test_final_model_loads_after_results_move(default_run: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    moved = tmp_path / "elsewhere"
    shutil.copytree(default_run / "results", moved / "results")
    shutil.copytree(default_run / "resources" / "models", moved / "models")
    for final in moved.rglob("final"):
        for f in final.rglob("*"):
            if f.is_file() and f.suffix in (".json", ".jinja", ".md", ".yaml"):
                assert str(default_run) not in f.read_text(), f"absolute path in {f}"
    sft = moved / "results/tiny/sft/secure_code/seed1/final"
    assert AutoModelForCausalLM.from_pretrained(sft).num_parameters() > 0
    lora = moved / "results/tiny/lora/secure_code/seed1/final"
    adapter = json.loads((lora / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(
        moved / "models" / adapter["base_model_name_or_path"]
    )
    assert isinstance(PeftModel.from_pretrained(base, lora), PeftModel)


def test_dag_and_rulegraph_render(default_run: Path, tmp_path: Path):
    if not shutil.which("dot"):
        pytest.skip("graphviz `dot` is not installed (apt-get install graphviz)")
    for kind in ("--dag", "--rulegraph"):
        graph = snakemake(default_run, kind, "--forceall").stdout
        svg = subprocess.run(
            ["dot", "-Tsvg"], input=graph, capture_output=True, text=True, check=True
        ).stdout
        assert "<svg" in svg and "train" in svg and "prepare_dataset" in svg


# --------------------------------------------------------------------------- evaluation


def test_evaluation_covers_every_run_and_the_base_rows(default_run: Path):
    from ftflow.evaluation import questions as qlib

    questions = qlib.load_questions(default_run / DEFAULT["evaluations"]["em_demo"]["questions"])
    expected_answers = {q.id: q.samples_per_paraphrase * len(q.paraphrases) for q in questions}
    for run in ftconfig.eval_runs(DEFAULT):
        summary = pd.read_csv(
            default_run / paths.eval_file(paths.EVAL_SUMMARY, **run.wildcards, evaluation="em_demo")
        )
        per_q = summary[summary.question_id != "__overall__"].set_index("question_id")
        assert per_q["n_answers"].to_dict() == expected_answers
        assert (summary.n_scored + summary.n_unscored == summary.n_answers).all()
        rates = summary.misaligned_share.dropna()
        assert ((rates >= 0) & (rates <= 1)).all()
        ok = summary.dropna(subset=["misaligned_share"])
        assert ((ok.ci_low <= ok.misaligned_share) & (ok.misaligned_share <= ok.ci_high)).all()
    table = pd.read_csv(default_run / paths.REPORT_EVAL_TABLE.format(evaluation="em_demo"))
    assert ("tiny", "base", "none") in set(
        zip(table.model, table.method, table.dataset, strict=True)
    )
    assert len(table) == len({(r.model, r.method, r.dataset) for r in ftconfig.eval_runs(DEFAULT)})
    seeds = {
        m: {s for b in DEFAULT["grid"] if m in b["models"] for s in b["seeds"]} for m in table.model
    }
    assert (table.n_seeds == [len(seeds[m]) for m in table.model]).all()
    png = default_run / paths.REPORT_EVAL_FIGURE.format(evaluation="em_demo")
    assert png.read_bytes()[:4] == b"\x89PNG"
    lm = pd.read_csv(default_run / paths.REPORT_LM_EVAL_TABLE.format(evaluation="secure_choice"))
    assert len(lm) == len(ftconfig.eval_runs(DEFAULT)) and (lm.n_samples == 10).all()
    assert lm.acc.between(0, 1).all()


def test_lora_eval_reads_the_adapter_without_merging(default_run: Path):
    final = default_run / paths.final_dir("tiny", "lora", "secure_code", 1)
    assert not (final / "model.safetensors").exists()  # only the adapter is there
    log = default_run / paths.log("generate_answers", "tiny/lora/secure_code/seed1", "em_demo")
    assert log.is_file()
