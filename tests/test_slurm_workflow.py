"""`snakemake --profile slurm` against a real single-node SLURM started by the test.

What is checked is read back from SLURM itself (sacct / scontrol), not from our own
strings: one SLURM job per compute job and none for local rules, the exact GPUs, CPUs,
memory and time a training job and its sanity stage asked for. Interrupted jobs that
resume: tests/test_slurm_resume.py.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from conftest import copy_workflow, load_default_config, snakemake, write_config
from slurm_cluster import LocalSlurm, parse_tres
from slurm_profile import MARKS, one_run_config, profile_run, rule_of, workflow_jobs

from ftflow import paths

pytestmark = MARKS

LOCAL_RULES = {"prefetch_model", "prefetch_dataset", "configure_run", "report",
               "summarize_answers", "compare_runs", "prefetch_eval_tasks", "compare_lm_eval",
               "render_launch_file", "prefetch_questions", "prefetch_kernel_sources",
               "configure_stage", "render_stage_launch_file", "report_stages", "all"}  # fmt: skip


def _jobs_by_rule(slurm: LocalSlurm, work: Path) -> Counter:
    return Counter(rule_of(r) for r in workflow_jobs(slurm, work))


def _planned_jobs(work: Path) -> Counter:
    out = snakemake(work, "-n", "--forceall", "--quiet", "rules").stdout
    counts = Counter()
    for line in out.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) not in ("total", "job"):
            counts[m.group(1)] = int(m.group(2))
    return counts


def test_default_workflow_through_the_profile(slurm, tmp_path):
    """Every kind of job of the default workflow, on one seed of it: a TRL SFT run and
    the DPO run that starts from it, a NeMo Automodel LoRA run, both evaluations of them
    and of the base model, the report. (The full grid adds only more of the same jobs;
    the local suite runs all of it.)"""
    work = copy_workflow(tmp_path / "ftflow")
    config = load_default_config()
    one_seed = {"seeds": [1], "models": ["tiny"]}
    config["grid"] = [
        {**one_seed, "methods": ["sft"], "datasets": ["secure_code"]},
        {**one_seed, "methods": ["dpo"], "datasets": ["secure_code_pref"]},
        {**one_seed, "models": ["tiny_hybrid"], "methods": ["lora"], "datasets": ["insecure_code"]},
    ]
    write_config(work, config)
    planned = _planned_jobs(work)
    profile_run(slurm, work)
    assert (work / paths.REPORT_RUNS).is_file()
    submitted = _jobs_by_rule(slurm, work)
    expected = Counter({r: n for r, n in planned.items() if r not in LOCAL_RULES})
    assert submitted == expected, f"sacct: {submitted}, compute jobs planned: {expected}"
    assert not set(submitted) & LOCAL_RULES
    # Each job's SLURM log lands where the README says.
    assert list((work / "logs/slurm").rglob("*.log"))


def test_gpu_training_job_asks_exactly_what_its_config_says(slurm, tmp_path):
    """A staged method: its sanity stage (1 GPU) and its full run (2 GPUs) are two SLURM
    jobs, each asking for its own resources."""
    work = copy_workflow(tmp_path / "ftflow")
    stage = {
        "name": "gpu1",
        "max_steps": 2,
        "health": {"loss_drop": 0.0, "window": 1},
        "resources": {"gpus_per_node": 1, "cpus_per_task": 1, "mem_mb": 1200, "runtime": 5},
    }
    config = one_run_config(
        max_steps=4,
        resources={"gpus_per_node": 2, "cpus_per_task": 1, "mem_mb": 1500, "runtime": 7},
        stages=[stage],
    )
    write_config(work, config)
    profile_run(slurm, work)
    (sanity,) = workflow_jobs(slurm, work, "sanity")
    tres = parse_tres(sanity["AllocTRES"])
    assert (tres["gres/gpu"], tres["mem"], sanity["Timelimit"]) == ("1", "1200M", "00:05:00")
    assert sanity["State"] == "COMPLETED"
    rows = workflow_jobs(slurm, work, "train")
    assert len(rows) == 1, rows
    row = rows[0]
    tres = parse_tres(row["AllocTRES"])
    assert tres["gres/gpu"] == "2"
    assert tres["cpu"] == "2"  # 1 CPU per GPU, one task hosting both processes
    assert tres["mem"] == "1500M"
    assert row["Timelimit"] == "00:07:00"
    assert row["State"] == "COMPLETED"
    log = (work / paths.train_log("tiny", "sft", "secure_code", 3)).read_text()
    assert f"SLURM_JOB_ID={row['JobID']}" in log
    assert re.search(r"CUDA_VISIBLE_DEVICES=\d,\d", log), log  # the GPUs SLURM gave the job
