"""A training job interrupted on the real local SLURM resumes from its checkpoint.

A job warned by SLURM's signal before its time limit checkpoints at that step, exits and is
retried with the longer `retry_runtime`; a running job requeued by SLURM (as preemption
does) starts again in the same SLURM job. Both resume from their checkpoint and end with
the weights of the same run trained without interruption (read back from sacct and from
the weights, not from our own strings).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import copy_workflow, write_config
from safetensors.torch import load_file
from slurm_cluster import LocalSlurm
from slurm_profile import MARKS, PROFILE, one_run_config, profile_env, profile_run, workflow_jobs

from ftflow import paths
from ftflow.checkpoints import complete_checkpoints

pytestmark = MARKS


def _resumable_config(steps: int, save_steps: int, **runtime) -> dict:
    """A run long enough to be interrupted, on one CPU, with a constant learning rate."""
    return one_run_config(
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


def test_time_limit_signal_checkpoint_retry_resume(slurm, tmp_path):
    """2-minute limit, more training than that: SLURM's warning signal (sbatch
    --signal=USR1@30) comes 30-90 s before the limit; the trainer writes a checkpoint at
    that step and exits; the retry resumes from that checkpoint, not from the last
    periodic one, and ends with the weights of an uninterrupted run."""
    # The signal comes 30-90 s into the first attempt, by step ~450 on an idle machine: 1000
    # steps outlast it; the retry's 15 minutes leave room for a loaded one (CI runs three
    # test workers on two cores).
    steps, save_steps = 1000, 200
    config = _resumable_config(
        steps, save_steps=save_steps, runtime=2, retry_runtime=15, signal_lead=30
    )
    work = copy_workflow(tmp_path / "slurm")
    write_config(work, config)
    with Uninterrupted(config, tmp_path) as straight:
        profile_run(slurm, work)

        rows = workflow_jobs(slurm, work, "train")
        states = [r["State"].split()[0] for r in rows]
        assert len(rows) == 2 and states == ["FAILED", "COMPLETED"], rows
        assert rows[0]["Timelimit"] == "00:02:00" and rows[-1]["Timelimit"] == "00:15:00"
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
    # The time limit is far above what the job needs: under CI load (four test workers
    # on two cores) a 10-minute limit was reached by the requeued run, whose warning
    # signal then ended it (FAILED) and Snakemake retried it as a new job.
    steps = 600
    config = _resumable_config(steps, save_steps=100, runtime=40)
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
        states = [r["State"].split()[0] for r in runs]
        train_log = work / paths.train_log("tiny", "sft", "secure_code", 3)
        assert states == ["REQUEUED", "COMPLETED"], (
            [{k: r.get(k) for k in ("State", "Elapsed", "ExitCode", "Timelimit")} for r in runs],
            train_log.read_text()[-3000:] if train_log.exists() else "no train log",
        )
        assert len(workflow_jobs(slurm, work, "train")) == 1  # not resubmitted by Snakemake
        assert 0 < _resumed_step(work) < steps
        straight.assert_same_weights(work)
