"""Shared fixtures: a scratch copy of the workflow, and one finished default run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ftflow import paths

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "data", "envs", "profiles", "slurm")


def copy_workflow(dest: Path) -> Path:
    """A runnable copy of the workflow (no results) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_symlink():
            os.symlink(os.readlink(src), dest / part)
        elif src.is_dir():
            shutil.copytree(src, dest / part)
        elif src.exists():
            shutil.copy2(src, dest / part)
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None, timeout=900):
    """Run the real snakemake CLI in ``workdir``; return the CompletedProcess."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    proc = subprocess.run(
        cmd,
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def trainers_in(workdir: Path) -> list[int]:
    """PIDs of ``ftflow.train`` processes whose working directory is ``workdir``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"ftflow.train" in cmdline and (proc / "cwd").resolve() == workdir.resolve():
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def kill_mid_run(workdir: Path, final: Path, after_step: int, cores: str = "1") -> int:
    """Build ``final`` through Snakemake and SIGKILL the whole job (Snakemake, launcher,
    every worker) once a checkpoint at or after ``after_step`` is complete; unlock as
    after a power loss; return the newest complete checkpoint's step. Asserts that no
    training process outlives the kill (torchrun's workers run in sessions of their own).
    """
    import signal
    import time

    from ftflow.checkpoints import complete_checkpoints, step

    checkpoints = workdir / final.parent / "checkpoints"
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", str(final), "--cores", cores],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline:
        done = complete_checkpoints(checkpoints)
        if done and step(done[-1]) >= after_step:
            break
        assert proc.poll() is None, "training finished before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while trainers_in(workdir) and time.time() < deadline:
        time.sleep(0.2)
    assert not trainers_in(workdir), "training processes survived the kill of their job"
    assert not (workdir / final).exists()
    snakemake(workdir, "--unlock")
    return step(complete_checkpoints(checkpoints)[-1])


def write_config(workdir: Path, config: dict, name: str = "config/config.yaml") -> Path:
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def load_default_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


# Test files in the order they are handed to pytest-xdist's workers (`--dist loadfile`):
# the longest first (as measured in a whole run, a file's tests summed), so that no long
# file starts last and alone. The real-SLURM files mostly wait (time limits, requeue
# delays, status polls) and run beside the others.
LONGEST_FIRST = (
    "test_train.py",
    "test_slurm_resume.py",
    "test_slurm_workflow.py",
    "test_distributed.py",
    "test_stages.py",
    "test_workflow.py",
    "test_automodel.py",
    "test_kernels.py",
    "test_backend_contract.py",
    "test_tracking.py",
    "test_ref_cache.py",
    "test_preflight.py",
    "test_interrupt.py",
    "test_config_keys.py",
    "test_checkpoints.py",
    "test_eval_api_rule.py",
    "test_readme.py",
    "test_prefetch_rules.py",
    "test_eval_lm_eval.py",
    "test_plan.py",
    "test_slurm_cluster.py",
)


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: tests keep their order within a file


@pytest.fixture(autouse=True)
def _restore_environment():
    """Tests that call job code in-process (which sets the offline variables) must not
    leak that environment into later tests' subprocesses."""
    # Building a DAG in-process exports the job environment (ftflow.checkout): a test
    # starts from the shell's, as a user's command would.
    for name in ("FTFLOW_CODE", "FTFLOW_PLANNING"):
        os.environ.pop(name, None)
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


# What `snakemake --cores 2` leaves in a workspace: outputs, caches, logs and the
# metadata Snakemake's rerun triggers read (code, params, inputs of every output).
RUN_PARTS = ("results", "resources", "logs", "benchmarks", ".snakemake/metadata")


def _copy_of_the_checkouts_run(dest: Path) -> bool:
    """Copy the checkout's own finished default run into ``dest`` when there is one that is
    complete and current: a dry run in the copy finds nothing to do. False otherwise
    (and ``dest`` is removed)."""
    if not (REPO / paths.REPORT_RUNS).is_file():
        return False
    copy_workflow(dest)
    for part in RUN_PARTS:
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, dest / part, symlinks=True)
    dry = snakemake(dest, "-n", "--cores", "2", check=False)
    if "Nothing to be done" in dry.stdout + dry.stderr:
        return True
    shutil.rmtree(dest)
    return False


@pytest.fixture(scope="session")
def default_run(tmp_path_factory) -> Path:
    """The embedded default workflow run to completion with `snakemake --cores 2`.

    That is the README's first command, which CI runs in the checkout just before the
    suite: when the checkout holds that run complete and up to date with its code and
    config (Snakemake's own dry run there has nothing to do), the suite reads a copy of it
    instead of training the whole grid a second time. Otherwise it runs it, in a scratch
    copy of the workflow.

    Every pytest-xdist worker reads the same one (tests only read it; `finished_copy`
    gives a private copy to modify): the first worker to get here makes it, under a lock.
    """
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's temporary root, common to its workers
    workdir = shared / "default" / "ftflow"
    with FileLock(shared / "default.lock"):
        if (workdir / ".done").is_file():
            return workdir
        if workdir.parent.exists():  # a worker that died while making it
            shutil.rmtree(workdir.parent)
        if not _copy_of_the_checkouts_run(workdir):
            copy_workflow(workdir)
            snakemake(workdir, "--cores", "2")
        (workdir / ".done").touch()
    return workdir


@pytest.fixture
def finished_copy(default_run, tmp_path) -> Path:
    """A private copy of the finished default run (mtimes preserved) to modify freely."""
    dest = tmp_path / "ftflow"
    shutil.copytree(default_run, dest, symlinks=True)
    return dest


@pytest.fixture
def workdir(tmp_path) -> Path:
    return copy_workflow(tmp_path / "ftflow")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real single-node SLURM cluster (tests/slurm_cluster.py), started once per session."""
    from slurm_cluster import LocalSlurm

    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
