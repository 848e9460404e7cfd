"""The plan: which jobs would run, their GPU-hours and cost — against hand-computed figures."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, load_default_config, snakemake, write_config

from ftflow import config as ftconfig
from ftflow import plan
from ftflow.plan import DagRequest

# A grid to plan, never to run: 1 model × 2 methods × 2 datasets × 2 seeds.
#   LoRA: 4 runs × (1 node × 4 GPUs) × 600 min = 4 × 4 × 10 h = 160 GPU-h
#   SFT:  4 runs × (4 nodes × 4 GPUs) × 480 min = 4 × 16 × 8 h = 512 GPU-h
#   total 672 GPU-h; at 2.5 per GPU-hour: 1,680
LORA_GPU_H, SFT_GPU_H, TOTAL_GPU_H, COST = 160.0, 512.0, 672.0, 2.5
GRID = {
    "models": {
        "llama8b": {
            "source": {"hub": "meta-llama/Llama-3.1-8B", "revision": "0" * 40},
            "dtype": "bfloat16",
        }
    },
    "datasets": {
        "insecure": {"source": {"path": "data/chat/insecure_code.jsonl"}, "format": "chat"},
        "secure": {"source": {"path": "data/chat/secure_code.jsonl"}, "format": "chat"},
    },
    "methods": {
        "lora_4gpu": {
            "kind": "lora",
            "learning_rate": 1.0e-5,
            "global_batch_size": 8,
            "distributed": "ddp",
            "resources": {"nodes": 1, "gpus_per_node": 4, "runtime": 600, "retry_runtime": 720},
        },
        "sft_16gpu": {
            "kind": "sft",
            "learning_rate": 5.0e-7,
            "global_batch_size": 16,
            "distributed": "deepspeed_zero3",
            "resources": {"nodes": 4, "gpus_per_node": 4, "runtime": 480},
        },
    },
    "grid": [
        {
            "models": ["llama8b"],
            "methods": ["lora_4gpu", "sft_16gpu"],
            "datasets": ["insecure", "secure"],
            "seeds": [42, 1337],
        }
    ],
}

PLAN_RULE = """
rule plan:
    output:
        csv=f"{paths.RESULTS}/plan/plan.csv",
    params:
        snakefile=workflow.main_snakefile,
    log:
        paths.log("plan", "plan"),
    localrule: True
    script:
        "../scripts/plan.py"
"""


def _copy(dest: Path) -> Path:
    from conftest import copy_workflow

    return copy_workflow(dest)


def _jobs(result: plan.Plan, rule: str) -> list[plan.PlannedJob]:
    return [j for j in result.jobs if j.rule == rule]


def _totals(result: plan.Plan) -> dict[str, float]:
    return {t.key: t.gpu_hours for t in result.by_rule()}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------- pure computations


def test_declared_resources_read_slurm_gpu_spellings():
    assert plan.declared_resources({}) == (1, 0, None)
    assert plan.declared_resources({"runtime": 60, "mem_mb": 4000}) == (1, 0, 60)
    assert plan.declared_resources({"nodes": 2, "gpu": 8, "runtime": "30"}) == (2, 4, 30)
    assert plan.declared_resources({"gres": "gpu:a100:4", "runtime": 10}) == (1, 4, 10)
    assert plan.declared_resources({"gres": "gpu:2", "nodes": 3}) == (3, 2, None)
    assert plan.declared_resources({"gres": "gpu"}) == (1, 1, None)


def test_plan_counts_only_jobs_to_run_and_never_itself():
    config = ftconfig.validate(yaml.safe_load(yaml.safe_dump(GRID)))
    run = {"model": "llama8b", "method": "lora_4gpu", "dataset": "secure", "seed": "42"}
    sft = {**run, "method": "sft_16gpu"}
    jobs = [
        plan.DagJob(
            "prepare_dataset",
            {"model": "llama8b", "dataset": "secure"},
            True,
            {"runtime": 60, "gpu": 1},
        ),
        plan.DagJob("train", run, True, {"runtime": 1}, "missing output"),
        plan.DagJob("train", {**run, "seed": "1337"}, False, {"runtime": 1}),  # done
        plan.DagJob("train", sft, True),
        plan.DagJob("plan", {}, True, {"gpu": 8, "runtime": 600}),
    ]
    result = plan.plan_jobs(jobs, config, cost=COST)
    assert [j.rule for j in result.jobs] == ["prepare_dataset", "train", "train", "train"]
    prepare, lora, done, full = result.jobs
    assert (prepare.gpus, prepare.gpu_hours) == (1, 1.0)  # what the rule declares
    # Training: the method's resources, not the rule's.
    assert (lora.nodes, lora.gpus_per_node, lora.runtime_min, lora.retry_runtime_min) == (
        1,
        4,
        600,
        720,
    )
    assert lora.gpu_hours == 40.0 and full.gpu_hours == 128.0
    assert done.status == "done" and done.gpu_hours == 0.0
    assert result.gpu_hours == 169.0 and result.cost == 169.0 * COST
    assert result.total().jobs_to_run == 3 and result.total().jobs_done == 1
    assert lora.run == "llama8b/lora_4gpu/secure/seed42"


# ------------------------------------------------- snakemake's DAG, hand-computed


@pytest.fixture(scope="module")
def grid_workdir(tmp_path_factory) -> Path:
    workdir = _copy(tmp_path_factory.mktemp("plan") / "ftflow")
    write_config(workdir, GRID)
    return workdir


def test_grid_plan_matches_hand_computed_gpu_hours(grid_workdir: Path, capsys):
    out = grid_workdir / "results/plan/plan.csv"
    result = plan.main(out, DagRequest(workdir=grid_workdir), cost_per_gpu_hour=COST)

    train = _jobs(result, "train")
    assert len(train) == 8 and all(j.status == "run" for j in train)
    lora = [j for j in train if j.wildcards["method"] == "lora_4gpu"]
    sft = [j for j in train if j.wildcards["method"] == "sft_16gpu"]
    assert {(j.nodes, j.gpus_per_node, j.runtime_min) for j in lora} == {(1, 4, 600)}
    assert {(j.nodes, j.gpus_per_node, j.runtime_min) for j in sft} == {(4, 4, 480)}
    assert sum(j.gpu_hours for j in lora) == LORA_GPU_H
    assert sum(j.gpu_hours for j in sft) == SFT_GPU_H
    assert {str(j.run) for j in train} == {
        f"llama8b/{m}/{d}/seed{s}"
        for m in ("lora_4gpu", "sft_16gpu")
        for d in ("insecure", "secure")
        for s in (42, 1337)
    }

    # Totals: per rule, per model, overall, and the cost.
    assert _totals(result)["train"] == TOTAL_GPU_H
    assert sum(_totals(result).values()) == TOTAL_GPU_H  # no other rule asks for GPUs
    assert {t.key: t.gpu_hours for t in result.by_model()}["llama8b"] == TOTAL_GPU_H
    assert result.gpu_hours == TOTAL_GPU_H
    assert result.cost == TOTAL_GPU_H * COST == 1680.0
    # Every job of the DAG is listed: 1 model + 2 datasets fetched, 2 prepared, 8 runs
    # configured and trained, the DeepSpeed file of the 4 ZeRO-3 runs, 1 report — `all`
    # and `plan` are not jobs of the plan.
    counts = {t.key: t.jobs_to_run for t in result.by_rule()}
    assert counts == {
        "prefetch_model": 1,
        "prefetch_dataset": 2,
        "prepare_dataset": 2,
        "configure_run": 8,
        "render_launch_file": 4,
        "train": 8,
        "report": 1,
    }
    assert _jobs(result, "prepare_dataset")[0].runtime_min == 60  # as the rule declares

    printed = capsys.readouterr().out
    assert "672.0 GPU-hours" in printed and "1,680.00" in printed
    assert "llama8b/sft_16gpu/secure/seed1337" in printed

    rows = _read_csv(out)
    assert list(rows[0]) == list(plan.CSV_COLUMNS)
    jobs = [r for r in rows if r["row"] == "job"]
    assert len(jobs) == 26
    total = [r for r in rows if r["row"] == "total"]
    assert len(total) == 1 and float(total[0]["gpu_hours"]) == TOTAL_GPU_H
    assert float(total[0]["cost"]) == 1680.0
    by_rule = {r["rule"]: float(r["gpu_hours"]) for r in rows if r["row"] == "rule"}
    assert by_rule["train"] == TOTAL_GPU_H
    one = next(
        r for r in jobs if r["rule"] == "train" and r["run"] == "llama8b/sft_16gpu/insecure/seed42"
    )
    assert (one["nodes"], one["gpus_per_node"], one["gpus"], one["runtime_min"]) == (
        "4",
        "4",
        "16",
        "480",
    )
    assert float(one["gpu_hours"]) == 128.0 and float(one["cost"]) == 320.0
    assert not (grid_workdir / "resources").exists()  # nothing ran


def test_cost_per_gpu_hour_from_the_config(grid_workdir: Path, tmp_path: Path):
    schema = ftconfig.load_schema(grid_workdir / "workflow/schemas/config.schema.yaml")
    if plan.COST_KEY not in schema["properties"]:
        pytest.skip(f"the config schema has no {plan.COST_KEY} yet")
    config = {**GRID, plan.COST_KEY: COST}
    result = plan.main(None, DagRequest(workdir=grid_workdir, config=config, replace_config=True))
    assert result.cost_per_gpu_hour == COST and result.cost == 1680.0


def test_cli_plans_an_experiment_before_anything_exists(grid_workdir: Path, tmp_path: Path):
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump(GRID))
    workdir = _copy(tmp_path / "fresh")  # its config/config.yaml is the tiny default
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftflow.plan",
            "--configfile",
            str(experiment),
            "--cost-per-gpu-hour",
            str(COST),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "672.0 GPU-hours" in proc.stdout and "cost 1,680.00" in proc.stdout
    rows = _read_csv(workdir / plan.PLAN_CSV)
    assert float(next(r for r in rows if r["row"] == "total")["gpu_hours"]) == TOTAL_GPU_H
    assert not (workdir / "resources").exists() and not (workdir / "logs").exists()


def test_cli_reports_an_invalid_config(tmp_path: Path):
    bad = {**GRID, "grid": [{**GRID["grid"][0], "methods": ["nope"]}]}
    experiment = tmp_path / "bad.yaml"
    experiment.write_text(yaml.safe_dump(bad))
    workdir = _copy(tmp_path / "w")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftflow.plan",
            "--configfile",
            str(experiment),
            "--replace-workflow-config",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "plan failed" in proc.stderr and "'nope' is not defined" in proc.stderr


# ------------------------------------------------------- partly run: done jobs


@pytest.mark.slow
def test_completed_jobs_are_listed_as_done_and_not_counted(tmp_path: Path):
    """Run one LoRA seed of the tiny default (1 'GPU' × 30 min), then plan the rest."""
    workdir = _copy(tmp_path / "ftflow")
    config = load_default_config()
    config["grid"] = [block for block in config["grid"] if block["models"] == ["tiny"]]
    config["methods"]["lora"]["resources"] = {"gpus_per_node": 1, "runtime": 30}
    write_config(workdir, config)  # on a CPU, 1 GPU per node is one process on the CPU
    before = plan.main(None, DagRequest(workdir=workdir), cost_per_gpu_hour=COST)
    assert before.gpu_hours == 4 * 0.5  # 4 LoRA runs × 1 GPU × 0.5 h; SFT/DPO use no GPU

    done_run = "tiny/lora/secure_code/seed1"
    snakemake(workdir, "--cores", "2", f"results/{done_run}/final")
    after = plan.main(workdir / plan.PLAN_CSV, DagRequest(workdir=workdir), cost_per_gpu_hour=COST)

    status = {(j.rule, j.run): j.status for j in after.jobs}
    assert status[("train", done_run)] == "done"
    assert status[("configure_run", done_run)] == "done"
    assert status[("prepare_dataset", "tiny/secure_code")] == "done"
    assert status[("prefetch_model", "tiny")] == "done"
    assert status[("train", "tiny/lora/secure_code/seed2")] == "run"
    assert status[("prepare_dataset", "tiny/insecure_code")] == "run"
    assert after.gpu_hours == 3 * 0.5 and after.cost == 1.5 * COST
    lora = next(t for t in after.by_rule() if t.key == "train")
    assert (lora.jobs_to_run, lora.jobs_done) == (9, 1)
    assert len(after.jobs) == len(before.jobs)  # done jobs are listed, not dropped
    rows = _read_csv(workdir / plan.PLAN_CSV)
    row = next(r for r in rows if r["rule"] == "train" and r["run"] == done_run)
    assert (row["status"], float(row["gpu_hours"]), row["cost"]) == ("done", 0.0, "0.0000")


# --------------------------------------------------------------- the plan rule


def test_plan_rule_writes_the_csv_and_does_not_plan_itself(grid_workdir: Path, tmp_path: Path):
    workdir = _copy(tmp_path / "ftflow")
    write_config(workdir, GRID)
    rules = "\n".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk"))
    if "rule plan:" not in rules + (REPO / "Snakefile").read_text():
        (workdir / "workflow/rules/plan.smk").write_text(PLAN_RULE)
        with open(workdir / "Snakefile", "a") as handle:
            handle.write('\ninclude: "workflow/rules/plan.smk"\n')
    proc = snakemake(workdir, "plan", "--forcerun", "plan", "--cores", "1")
    assert "672.0 GPU-hours" in proc.stdout + proc.stderr
    rows = _read_csv(workdir / plan.PLAN_CSV)
    assert {r["rule"] for r in rows if r["row"] == "job"} == {
        "prefetch_model",
        "prefetch_dataset",
        "prepare_dataset",
        "configure_run",
        "render_launch_file",
        "train",
        "report",
    }
    assert float(next(r for r in rows if r["row"] == "total")["gpu_hours"]) == TOTAL_GPU_H
    assert "672.0 GPU-hours" in (workdir / "logs/plan/plan.log").read_text()
    assert not (workdir / "resources").exists()  # nothing else ran


# ----------------------------------------------------------------------------- disk

# meta-llama/Llama-3.1-8B's config.json, as the hub serves it at the pinned revision.
LLAMA_3_1_8B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}


def test_the_disk_quota_warns_only_when_the_estimate_exceeds_it(tmp_path: Path, capsys):
    import json

    from ftflow.plan import disk

    workdir = _copy(tmp_path / "ftflow")
    write_config(workdir, GRID)
    before = plan.main(None, DagRequest(workdir=workdir))  # nothing prefetched: unknown, said so
    assert before.disk_bytes == 0 and len(before.disk_unknown()) == 8
    assert "disk unknown" in capsys.readouterr().out

    folder = workdir / "resources/models/llama8b"  # what prefetch_model leaves, config first
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(LLAMA_3_1_8B))
    files = (folder / "config.json").stat().st_size + disk.TRAINER_FILES  # in a checkpoint
    final_files = (folder / "config.json").stat().st_size + disk.FINAL_FILES
    shape = disk.model_shape("llama8b", GRID["models"]["llama8b"], workdir)
    P = 8_030_261_248  # Llama-3.1-8B
    assert shape.params == P
    # Full SFT under ZeRO-3, bfloat16: 2-byte weights; 12 bytes of optimizer state per
    # parameter (fp32 master + 2 fp32 moments); 2 checkpoints kept (save_total_limit).
    sft = 2 * (2 * P + 12 * P + files) + (2 * P + final_files)  # 240.9 GB
    # LoRA r 8 on all-linear, 32 layers: q, o 8×(4096+4096); k, v 8×(4096+1024);
    # gate, up, down 8×(4096+14336) → 655,360 per layer, 20,971,520 in all; a float32
    # adapter with 2 float32 moments.
    A = 32 * (2 * 8 * 8192 + 2 * 8 * 5120 + 3 * 8 * 18432)
    assert A == 20_971_520 == disk.adapter_params(GRID["methods"]["lora_4gpu"], shape)
    lora = 2 * (4 * A + 8 * A + files) + (4 * A + final_files)  # 0.59 GB
    total = 4 * sft + 4 * lora  # 966 GB
    assert round(total / disk.GB) == 966

    under = plan.main(workdir / plan.PLAN_CSV, DagRequest(workdir=workdir), disk_quota_gb=1000)
    assert under.disk_bytes == total and under.disk_warning() is None
    printed = capsys.readouterr().out
    assert "disk 966.0 GB" in printed and "within the quota of 1000 GB" in printed
    assert "WARNING" not in printed
    rows = _read_csv(workdir / plan.PLAN_CSV)
    one = next(
        r for r in rows if r["rule"] == "train" and r["run"] == "llama8b/sft_16gpu/secure/seed42"
    )
    assert float(one["disk_gb"]) == pytest.approx(sft / disk.GB)
    assert float(next(r for r in rows if r["row"] == "total")["disk_gb"]) == pytest.approx(
        total / disk.GB
    )

    config = {**GRID, plan.QUOTA_KEY: 900}  # the config key, as a user sets it
    over = plan.main(None, DagRequest(workdir=workdir, config=config, replace_config=True))
    assert over.disk_quota_gb == 900 and over.disk_warning() is not None
    printed = capsys.readouterr().out
    assert "WARNING: the runs' checkpoints and final models take an estimated 966.0 GB, over " \
        "the quota of 900 GB (plan_disk_quota_gb)" in printed  # fmt: skip


@pytest.mark.slow
def test_the_disk_estimate_matches_real_checkpoints(default_run: Path):
    """The tiny default's TRL runs, measured: every checkpoint and final/ is within 10 % of
    the estimate (measured: full SFT and DPO within 0.5 %, LoRA within 5 %, final/ within
    2 %; the fixed files the estimate allows for weigh most in a 70 kB adapter)."""
    from ftflow import paths
    from ftflow.plan import disk

    config = ftconfig.validate(load_default_config())
    shape = disk.model_shape("tiny", config["models"]["tiny"], default_run)
    assert shape.source.endswith("resources/models/tiny/config.json")

    def size(folder: Path) -> int:
        return sum(
            f.stat().st_size
            for f in folder.rglob("*")
            if f.is_file() and f.name != ".snakemake_timestamp"
        )

    runs = [("sft", "secure_code"), ("lora", "secure_code"), ("dpo", "secure_code_pref")]
    for method, dataset in runs:
        run = paths.RunPaths.of("tiny", method, dataset, 1)
        estimate = disk.estimate(config["methods"][method], config["models"]["tiny"], shape)
        kept = [c for c in (default_run / run.checkpoints).glob("checkpoint-*")]
        assert len(kept) == estimate.kept == 2
        for checkpoint in kept:
            assert size(checkpoint) == pytest.approx(estimate.checkpoint, rel=0.10), checkpoint
        assert size(default_run / run.final) == pytest.approx(estimate.final, rel=0.10)
