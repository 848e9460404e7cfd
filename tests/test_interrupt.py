"""A signal before the time limit (USR1) or a preemption (TERM): the trainer ends its step
with a complete checkpoint and exits 75; the retry resumes from that checkpoint — not from
the last periodic one — and ends with the weights of an uninterrupted run. Both backends,
locally (the real-SLURM path, with sbatch's --signal, is in test_slurm_resume.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import trainers_in
from safetensors.torch import load_file

from ftflow import interrupt, paths
from ftflow.checkpoints import complete_checkpoints, step


def test_the_lead_covers_the_measured_save_and_slurms_minute(tmp_path: Path):
    assert interrupt.lead_seconds("auto", 60, None) == 60 + 2 * interrupt.UNMEASURED_SAVE_SECONDS
    interrupt.record_save_seconds(tmp_path, 12.3)
    interrupt.record_save_seconds(tmp_path, 4.0)  # the longest save is kept
    measured = interrupt.measured_save_seconds([tmp_path, tmp_path / "absent"])
    assert measured == 12.3
    assert interrupt.lead_seconds("auto", 60, measured) == 60 + 25
    assert interrupt.lead_seconds(30, 60, measured) == 30  # set by hand
    assert interrupt.lead_seconds("auto", 2, None) == 60  # at most half of a 2-minute limit
    assert interrupt.lead_seconds(0, 60, measured) == 0
    assert interrupt.slurm_option(85) == "--signal=USR1@85"
    assert interrupt.slurm_option(0) == ""


def _signal_mid_run(work: Path, final: Path, signum: int, after_step: int) -> subprocess.Popen:
    """Build ``final`` with Snakemake; once a periodic checkpoint at or after
    ``after_step`` is complete, send ``signum`` to the training process alone."""
    checkpoints = work / final.parent / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", str(final), "--cores", "1"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline:
        done = complete_checkpoints(checkpoints)
        if done and step(done[-1]) >= after_step and trainers_in(work):
            break
        assert proc.poll() is None, "training finished before the signal"
        time.sleep(0.05)
    for pid in trainers_in(work):
        os.kill(pid, signum)
    return proc


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "dataset", "signum"),
    [("tiny", "secure_code", signal.SIGUSR1), ("tiny_hybrid", "insecure_code", signal.SIGTERM)],
    ids=["trl-usr1", "automodel-term"],
)
def test_a_signal_checkpoints_and_the_retry_resumes_from_it(
    finished_copy: Path, model, dataset, signum
):
    run = paths.RunPaths.of(model, "sft", dataset, 1)
    reference = load_file(finished_copy / run.final / "model.safetensors")
    shutil.rmtree(finished_copy / run.final)
    shutil.rmtree(finished_copy / run.checkpoints)
    save_steps = 4  # the default config's

    proc = _signal_mid_run(finished_copy, run.final, signum, after_step=save_steps)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]  # the rule's retry finished the run

    # The retry's log (Snakemake empties it per attempt) says why the first one stopped.
    log = (finished_copy / run.log()).read_text()
    name = signal.Signals(signum).name
    stopped = re.search(rf"the previous attempt stopped by {name} after step (\d+)", log)
    assert stopped, log[:3000]
    at = int(stopped.group(1))
    resumed = re.findall(r"resuming from (\S+) \(step (\d+)\)", log)
    assert resumed and int(resumed[-1][1]) == at, (at, resumed)
    last_periodic = at // save_steps * save_steps
    print(f"{model}: {name} at step {at}; a kill there would have lost {at - last_periodic}")
    assert (finished_copy / run.checkpoints / interrupt.SAVE_TIME).is_file()
    weights = load_file(finished_copy / run.final / "model.safetensors")
    assert weights.keys() == reference.keys()
    assert all((weights[k] == reference[k]).all() for k in weights)
