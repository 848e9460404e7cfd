"""`snakemake --profile slurm` against a real single-node SLURM started by the test.

What is checked is read back from SLURM itself (sacct / scontrol), not from our own
strings: one SLURM job per compute job and none for local rules, the exact GPUs, CPUs,
memory and time a training job asked for, a job warned by SLURM's signal before its time
limit that checkpoints and is retried, and a running job requeued by SLURM (as preemption
does); both resume from their checkpoint and end with the weights of an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import copy_workflow, load_default_config, snakemake, write_config
from safetensors.torch import load_file
from slurm_cluster import LocalSlurm, available, parse_tres

from ftflow import paths
from ftflow.checkpoints import complete_checkpoints

_OK, _WHY = available()
if not _OK and os.environ.get("FTFLOW_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"FTFLOW_REQUIRE_SLURM=1 but {_WHY}")

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(not _OK, reason=_WHY)]

LOCAL_RULES = {"prefetch_model", "prefetch_dataset", "configure_run", "report",
               "summarize_answers", "compare_runs", "prefetch_eval_tasks", "compare_lm_eval",
               "render_launch_file", "prefetch_questions", "prefetch_kernel_sources",
               "configure_stage", "render_stage_launch_file", "report_stages", "all"}  # fmt: skip


PROFILE = ("--profile", "slurm", "--slurm-init-seconds-before-status-checks", "1")


def profile_env(slurm: LocalSlurm) -> dict:
    """The site variables a user sets once for the profile."""
    return {
        **slurm.env,
        "FTFLOW_SLURM_ACCOUNT": slurm.account,
        "FTFLOW_SLURM_PARTITION": slurm.partition,
    }


def profile_run(slurm: LocalSlurm, work: Path, *args: str, timeout=1800):
    """`snakemake --profile slurm` exactly as a user types it, with the site variables set."""
    return snakemake(work, *PROFILE, *args, env=profile_env(slurm), timeout=timeout)


def _rule(row: dict) -> str:
    """The plugin's sbatch --comment is rule_<name>[_wildcards_<values>]."""
    return row["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def _jobs(slurm: LocalSlurm, work: Path, rule: str | None = None) -> list[dict]:
    rows = [r for r in slurm.sacct_jobs() if Path(r["WorkDir"]).resolve() == work.resolve()]
    return [r for r in rows if rule is None or _rule(r) == rule]


def _jobs_by_rule(slurm: LocalSlurm, work: Path) -> Counter:
    return Counter(_rule(r) for r in _jobs(slurm, work))


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


def _gpu_config(**sft) -> dict:
    config = load_default_config()
    config.pop("evaluations")
    config["methods"]["sft"].update(sft)
    config["grid"] = [
        {"models": ["tiny"], "methods": ["sft"], "datasets": ["secure_code"], "seeds": [3]}
    ]
    return config


def _resumable_config(steps: int, save_steps: int, **runtime) -> dict:
    """A run long enough to be interrupted, on one CPU, with a constant learning rate."""
    return _gpu_config(
        max_steps=steps,
        save_steps=save_steps,
        per_device_batch_size=8,
        global_batch_size=8,
        lr_scheduler="constant",
        resources={"cpus_per_task": 1, "mem_mb": 2000, **runtime},
    )


def _resumed_step(work: Path) -> int:
    """The step the training log says it resumed from (0 when it started from scratch)."""
    log = (work / paths.train_log("tiny", "sft", "secure_code", 3)).read_text()
    resumed = re.search(r"resuming from checkpoint-(\d+) \(step (\d+)\)", log)
    return int(resumed.group(2)) if resumed else 0


class Uninterrupted:
    """The same run trained locally without interruption, started in the background: it
    takes one of the two cores while the SLURM job trains on the other."""

    def __init__(self, config: dict, tmp_path: Path):
        self.work = copy_workflow(tmp_path / "local")
        write_config(self.work, config)
        self.log = tmp_path / "local.log"

    def __enter__(self) -> Uninterrupted:
        with open(self.log, "w") as out:
            cmd = [sys.executable, "-m", "snakemake", "--cores", "1"]
            self.proc = subprocess.Popen(
                cmd, cwd=self.work, stdout=out, stderr=out, start_new_session=True
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:  # the test failed early: stop snakemake and its job
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def assert_same_weights(self, work: Path) -> None:
        assert self.proc.wait(timeout=900) == 0, self.log.read_text()[-4000:]
        final = paths.final_dir("tiny", "sft", "secure_code", 3)
        a = load_file(work / final / "model.safetensors")
        b = load_file(self.work / final / "model.safetensors")
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


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
    config = _gpu_config(
        max_steps=4,
        resources={"gpus_per_node": 2, "cpus_per_task": 1, "mem_mb": 1500, "runtime": 7},
        stages=[stage],
    )
    write_config(work, config)
    profile_run(slurm, work)
    (sanity,) = _jobs(slurm, work, "sanity")
    tres = parse_tres(sanity["AllocTRES"])
    assert (tres["gres/gpu"], tres["mem"], sanity["Timelimit"]) == ("1", "1200M", "00:05:00")
    assert sanity["State"] == "COMPLETED"
    rows = _jobs(slurm, work, "train")
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


def test_time_limit_signal_checkpoint_retry_resume(slurm, tmp_path):
    """2-minute limit, more training than that: SLURM's warning signal (sbatch
    --signal=USR1@30) comes 30-90 s before the limit; the trainer writes a checkpoint at
    that step and exits; the retry resumes from that checkpoint, not from the last
    periodic one, and ends with the weights of an uninterrupted run."""
    steps, save_steps = 2400, 200
    config = _resumable_config(
        steps, save_steps=save_steps, runtime=2, retry_runtime=10, signal_lead=30
    )
    work = copy_workflow(tmp_path / "slurm")
    write_config(work, config)
    with Uninterrupted(config, tmp_path) as straight:
        profile_run(slurm, work)

        rows = _jobs(slurm, work, "train")
        states = [r["State"].split()[0] for r in rows]
        assert len(rows) == 2 and states == ["FAILED", "COMPLETED"], rows
        assert rows[0]["Timelimit"] == "00:02:00" and rows[-1]["Timelimit"] == "00:10:00"
        # The retry's log (Snakemake empties it per attempt) says why the first stopped.
        log = (work / paths.train_log("tiny", "sft", "secure_code", 3)).read_text()
        found = re.search(r"the previous attempt stopped by SIGUSR1 after step (\d+)", log)
        assert found, log[:3000]
        at = int(found.group(1))
        assert 0 < at < steps and _resumed_step(work) == at
        # What a kill at the limit would have lost (the steps after the last periodic
        # checkpoint), against none: the signal's checkpoint is the step it came at.
        print(f"signal at step {at}: {at % save_steps} steps saved from a time-limit kill")
        straight.assert_same_weights(work)


def _train_job_id(slurm: LocalSlurm, work: Path) -> str | None:
    """The SLURM id of this workflow's running train job, if squeue lists one."""
    out = slurm.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k|%Z"], timeout=30).stdout
    for line in out.splitlines():
        job_id, comment, workdir = line.split("|", 2)
        if comment.startswith("rule_train") and Path(workdir).resolve() == work.resolve():
            return job_id
    return None


def test_requeued_job_resumes_from_its_checkpoint(slurm, tmp_path):
    """A running training job requeued by SLURM (what preemption with PreemptMode=REQUEUE
    does) starts again in the same SLURM job, resumes from its newest complete checkpoint
    and ends with the weights of an uninterrupted run."""
    steps = 800
    config = _resumable_config(steps, save_steps=100, runtime=10)
    work = copy_workflow(tmp_path / "slurm")
    write_config(work, config)
    checkpoints = work / paths.checkpoints_dir("tiny", "sft", "secure_code", 3)
    log = tmp_path / "snakemake.log"
    with Uninterrupted(config, tmp_path) as straight, open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *PROFILE],
            cwd=work, env={**os.environ, **profile_env(slurm)}, stdout=out, stderr=out,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            job_id = None
            while time.monotonic() < deadline and proc.poll() is None:
                job_id = job_id or _train_job_id(slurm, work)
                if job_id and complete_checkpoints(checkpoints):
                    break
                time.sleep(0.2)
            assert job_id and proc.poll() is None, "training ended before it was requeued"
            slurm.run(["scontrol", "requeue", job_id])
            assert proc.wait(timeout=900) == 0, log.read_text()[-6000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

        # One SLURM job id, two runs of it: sacct --duplicates lists the requeued run too.
        runs = slurm.sacct_jobs([job_id], extra_args=["--duplicates"])
        assert [r["State"].split()[0] for r in runs] == ["REQUEUED", "COMPLETED"], runs
        assert len(_jobs(slurm, work, "train")) == 1  # not resubmitted by Snakemake
        assert 0 < _resumed_step(work) < steps
        straight.assert_same_weights(work)
