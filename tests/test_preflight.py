"""`snakemake --profile slurm preflight` against a real single-node SLURM (4 GPUs).

SLURM itself judges each request (``sbatch --test-only``): a training job that fits, one
asking more GPUs than the node has and one whose retry asks more time than the
partition allows are each reported with SLURM's own words, the target fails and nothing
reaches the queue (sacct). Then the fitting run is submitted for real, and the sbatch
lines the executor plugin used are the preflight's, option for option.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
from conftest import copy_workflow, load_default_config, snakemake, write_config
from slurm_cluster import LocalSlurm, available

from ftflow import paths
from ftflow.plan import preflight

_OK, _WHY = available()
if not _OK and os.environ.get("FTFLOW_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"FTFLOW_REQUIRE_SLURM=1 but {_WHY}")

slurm_only = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(not _OK, reason=_WHY)]


def _slurm_test(test):
    for mark in slurm_only:
        test = mark(test)
    return test


PROFILE = ("--profile", "slurm", "--slurm-init-seconds-before-status-checks", "1")
# One CPU per training job whatever its GPUs: the node has as many CPUs as this machine,
# and a GPU request must be judged on its GPUs. (Set on the command line, as a user
# would, so the preflight is shown to honour --set-resources as the submission does.)
ONE_CPU = ("--set-resources", "train:cpus_per_task=1")
RUN = ("tiny", "sft", "secure_code", 3)


def _env(slurm: LocalSlurm, account: str | None = None) -> dict:
    """The site variables a user sets once for the profile."""
    return {
        **slurm.env,
        "FTFLOW_SLURM_ACCOUNT": account or slurm.account,
        "FTFLOW_SLURM_PARTITION": slurm.partition,
    }


def _config(slurm: LocalSlurm) -> dict:
    """One seed of SFT in three resource shapes: fits, too many GPUs, a retry too long."""
    config = load_default_config()
    config.pop("evaluations")
    sft = config["methods"]["sft"]
    fits = {"gpus_per_node": 1, "cpus_per_task": 1, "mem_mb": 1500, "runtime": 5}
    config["methods"] = {
        "sft": {**sft, "max_steps": 2, "save_steps": 2, "resources": fits},  # runs for real
        "sft_wide": {
            **sft,
            "per_device_batch_size": 1,  # 8 processes × 1 = the global batch of 8
            "resources": {**fits, "gpus_per_node": slurm.n_gpus * 2},
        },
        # 2 days is the partition's MaxTime: the first attempt fits, the retry cannot.
        "sft_long_retry": {**sft, "resources": {**fits, "retry_runtime": 3 * 24 * 60}},
    }
    config["grid"] = [
        {"models": ["tiny"], "methods": list(config["methods"]), "datasets": ["secure_code"],
         "seeds": [3]}
    ]  # fmt: skip
    return config


def _submitted(slurm: LocalSlurm, work: Path) -> list[dict]:
    return [r for r in slurm.sacct_jobs() if Path(r["WorkDir"]).resolve() == work.resolve()]


def _report(work: Path) -> dict[tuple[str, str, int], dict]:
    jobs = json.loads((work / preflight.PREFLIGHT_JSON).read_text())["jobs"]
    return {(j["rule"], j["wildcards"].get("method", ""), j["attempt"]): j for j in jobs}


def _options(line: str) -> list[str]:
    """An sbatch line's options, without what differs between two submissions of the same
    request: the program, --parsable/--test-only, the run's job name and the command."""
    line = line.split(" --wrap=")[0]
    argv = [a for a in shlex.split(line) if a not in ("sbatch", "--parsable", "--test-only")]
    i = argv.index("--job-name")
    return argv[:i] + argv[i + 2 :]


@pytest.fixture(scope="module")
def checked(slurm, tmp_path_factory):
    """The workflow after `snakemake --profile slurm preflight`: workdir, process, report."""
    work = copy_workflow(tmp_path_factory.mktemp("preflight") / "ftflow")
    write_config(work, _config(slurm))
    proc = snakemake(
        work, "preflight", *PROFILE, *ONE_CPU, env=_env(slurm), check=False, timeout=600
    )
    assert (work / preflight.PREFLIGHT_JSON).is_file(), proc.stdout + proc.stderr
    return work, proc, _report(work)


@_slurm_test
def test_each_job_gets_slurms_own_verdict_and_nothing_is_submitted(slurm, checked):
    work, proc, report = checked
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    fits = report[("train", "sft", 1)]
    assert fits["ok"], fits
    assert re.search(r"sbatch: Job \d+ to start at", fits["message"]), fits
    assert "--gres=gpu:1" in fits["sbatch"] and "-t 5" in fits["sbatch"]

    wide = report[("train", "sft_wide", 1)]
    assert not wide["ok"]
    assert f"--gres=gpu:{2 * slurm.n_gpus}" in wide["sbatch"]
    assert "--cpus-per-task=1" in wide["sbatch"]
    assert "Requested node configuration is not available" in wide["message"], wide

    long_retry = report[("train", "sft_long_retry", 2)]
    assert not long_retry["ok"] and "-t 4320" in long_retry["sbatch"]
    assert "Requested time limit is invalid" in long_retry["message"], long_retry
    assert report[("train", "sft_long_retry", 1)]["ok"]  # the first attempt fits
    assert report[("prepare_dataset", "", 1)]["ok"]
    # Local rules never go through sbatch; neither does anything else.
    assert {rule for rule, _, _ in report} == {"prepare_dataset", "train"}

    assert "2 of 5 SLURM job(s) cannot run as requested" in output, output[-3000:]
    assert f"train tiny/sft_wide/secure_code/seed3: {wide['message']}" in output
    assert (work / preflight.PREFLIGHT_TXT).read_text().count("FAIL") == 2
    assert not _submitted(slurm, work)
    assert not list(work.glob("results/tiny/*/secure_code"))


@_slurm_test
def test_an_unknown_account_is_refused_by_slurm(slurm, checked):
    work, _, _ = checked
    env = _env(slurm, account="no_such_account")
    proc = snakemake(work, *PROFILE, "preflight", env=env, check=False, timeout=600)
    assert proc.returncode != 0
    report = _report(work)
    assert report and not any(job["ok"] for job in report.values())
    for job in report.values():
        assert "-A no_such_account" in job["sbatch"]
        assert "Invalid account" in job["message"], job
    assert not _submitted(slurm, work)


@_slurm_test
def test_the_plugin_submits_exactly_what_preflight_checked(slurm, checked):
    """The sbatch lines of a real submission (the plugin logs them with --verbose) are the
    preflight's, option for option."""
    work, _, report = checked
    checked_lines = {(rule, method): job["sbatch"] for (rule, method, _), job in report.items()}
    final = paths.final_dir(*RUN)
    run = snakemake(work, str(final), *PROFILE, *ONE_CPU, "--verbose", env=_env(slurm), timeout=900)
    calls = re.findall(r"sbatch call: (sbatch --parsable .*)", run.stdout + run.stderr)
    submitted = {
        re.search(r"--comment rule_(\w+?)_wildcards", line).group(1): _options(line)
        for line in calls
    }
    assert set(submitted) == {"prepare_dataset", "train"}, calls
    assert submitted["train"] == _options(checked_lines[("train", "sft")])
    assert submitted["prepare_dataset"] == _options(checked_lines[("prepare_dataset", "")])
    assert {r["State"] for r in _submitted(slurm, work)} == {"COMPLETED"}


def test_without_the_slurm_profile_preflight_says_how_to_run_it(workdir):
    proc = snakemake(workdir, "preflight", "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "run it as `snakemake --profile slurm preflight`" in proc.stdout + proc.stderr
    assert not (workdir / preflight.PREFLIGHT_JSON).exists()


def test_only_a_test_only_line_is_ever_run():
    request = preflight.Request("train", {}, 1, ("sbatch", "--parsable", "--wrap=true"))
    with pytest.raises(preflight.PreflightError, match="without --test-only"):
        preflight.ask_slurm(request)
    with pytest.raises(preflight.PreflightError, match="unexpected sbatch line"):
        preflight.test_only_argv("sbatch --hold --parsable -t 5")
    assert preflight.test_only_argv("sbatch --parsable -t 5 --gres=gpu:2") == (
        "sbatch", "--test-only", "-t", "5", "--gres=gpu:2", "--wrap=true"
    )  # fmt: skip
