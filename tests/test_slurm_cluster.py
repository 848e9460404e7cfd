"""Against a real single-node SLURM cluster on localhost (tests/slurm_cluster.py).

Skipped, with the reason, only when the Debian packages are missing (see
scripts/install-system-deps.sh); with FTFLOW_REQUIRE_SLURM=1 (set it in CI) a missing
cluster is a failure instead of a skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from slurm_cluster import LocalSlurm, available, parse_tres

_OK, _WHY = available()
if not _OK and os.environ.get("FTFLOW_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"FTFLOW_REQUIRE_SLURM=1 but {_WHY}")

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(not _OK, reason=_WHY)]

JOB_TIMEOUT = 120  # s, for one tiny job to be scheduled, run and accounted
SNAKEMAKE_TIMEOUT = 300  # s, for the two-rule workflow


def test_gpu_job_gets_requested_resources(slurm, tmp_path):
    out = tmp_path / "job.out"
    job_id = slurm.sbatch(
        [
            "--job-name=gpu-probe",
            f"--partition={slurm.partition}",
            f"--account={slurm.account}",
            "--gpus=2",
            "--cpus-per-task=1",
            "--mem=500M",
            "--time=00:02:00",
            f"--output={out}",
        ],
        script=textwrap.dedent(
            """\
            #!/bin/sh
            echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"
            """
        ),
    )
    row = slurm.wait_job(job_id, timeout=JOB_TIMEOUT)
    info = f"sacct: {row}\n{slurm.logs_tail(15)}"
    assert row["State"] == "COMPLETED", info
    assert row["ExitCode"] == "0:0", info

    # what slurmdbd recorded
    alloc = parse_tres(row["AllocTRES"])
    req = parse_tres(row["ReqTRES"])
    assert alloc.get("gres/gpu") == "2", info
    assert req.get("gres/gpu") == "2", info
    assert alloc.get("mem") == "500M", info
    assert row["ReqMem"] == "500M", info
    assert alloc.get("cpu") == "1", info
    assert row["Timelimit"] == "00:02:00", info
    assert row["Partition"] == slurm.partition, info
    assert row["Account"] == slurm.account, info
    assert row["NodeList"] == slurm.node_name, info

    # what slurmctld says (it keeps finished jobs for MinJobAge=300 s)
    job = slurm.scontrol_job(job_id)
    assert job["JobState"] == "COMPLETED", job
    assert job["TimeLimit"] == "00:02:00", job
    assert job["MinMemoryNode"] == "500M", job
    assert "gres/gpu=2" in job["TRES"].split()[0].split(","), job
    assert job["TresPerJob"] in ("gres:gpu:2", "gres/gpu:2", "gpu:2"), job

    # what the job itself saw: two distinct fake GPUs out of the node's four
    line = out.read_text().strip()
    assert line.startswith("CUDA_VISIBLE_DEVICES="), line
    devices = line.split("=", 1)[1].split(",")
    assert len(devices) == 2 and len(set(devices)) == 2, line
    assert set(devices) <= {str(i) for i in range(slurm.n_gpus)}, line


SNAKEFILE = """\
localrules: gather

rule all:
    input: "result.txt"

rule compute:
    output: "computed.txt"
    resources: runtime=5
    shell: "echo ${{SLURM_JOB_ID:-none}} > {output}"

rule gather:
    input: "computed.txt"
    output: "result.txt"
    shell: "cp {input} {output}; echo ${{SLURM_JOB_ID:-none}} >> {output}"
"""


def test_snakemake_slurm_executor(slurm, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "Snakefile").write_text(SNAKEFILE)
    cmd = [
        sys.executable, "-m", "snakemake",
        "--executor", "slurm",
        "--jobs", "2",
        "--default-resources",
        f"slurm_partition={slurm.partition}", f"slurm_account={slurm.account}",
        "--slurm-init-seconds-before-status-checks", "1",
        "--slurm-keep-successful-logs",
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, cwd=proj, env=slurm.env, capture_output=True, text=True,
            timeout=SNAKEMAKE_TIMEOUT,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"snakemake timed out:\n{exc.stderr}\n{_job_logs(proj)}\n{slurm.logs_tail(15)}")
    info = f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\n{_job_logs(proj)}"
    assert proc.returncode == 0, info

    compute_job, gather_job = (proj / "result.txt").read_text().split()
    assert gather_job == "none", info  # the local rule ran outside SLURM
    assert compute_job.isdigit(), info

    row = slurm.wait_job(compute_job, timeout=JOB_TIMEOUT)
    assert row["State"] == "COMPLETED", row
    assert row["Account"] == slurm.account, row
    assert row["Partition"] == slurm.partition, row
    assert row["Timelimit"] == "00:05:00", row  # runtime=5 (minutes) -> sbatch -t 5

    # exactly one SLURM job for this workflow: the non-local rule's
    ours = [r for r in slurm.sacct_jobs() if Path(r["WorkDir"] or "/").resolve() == proj.resolve()]
    assert [r["JobIDRaw"] for r in ours] == [compute_job], ours
    # the plugin passes the rule name as --comment (stored: AccountingStoreFlags=job_comment)
    assert ours[0]["Comment"] == "rule_compute", ours
    assert not [r for r in slurm.sacct_jobs() if "gather" in r["Comment"]]


def test_second_cluster_is_isolated_and_stop_kills_only_its_own(slurm, tmp_path):
    other = LocalSlurm(tmp_path / "other")
    with other:
        assert set(other.ports.values()).isdisjoint(slurm.ports.values())
        job_id = other.sbatch(
            ["--job-name=sleep-in-other", "--output=/dev/null"], script="#!/bin/sh\nsleep 300\n"
        )
        pids = other.pids
        assert set(pids) == {"munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd"}
        assert not set(pids.values()) & set(slurm.pids.values())
        # the job is this cluster's business only
        assert job_id in other.squeue_ids()
        assert not [r for r in slurm.sacct_jobs() if r["JobName"] == "sleep-in-other"]
    for name, pid in pids.items():
        assert not _alive(pid), f"{name} (pid {pid}) survived stop()"
    # the running job's slurmstepd is gone too
    assert not _stepds_of(other.conf_path)
    assert not (tmp_path / "other" / "mysql").exists()
    # ... and the module's cluster is untouched
    for name, pid in slurm.pids.items():
        assert _alive(pid), f"{name} of the module cluster died"
    res = slurm.run(["sinfo", "-h", "-N", "-o", "%t"])
    assert res.stdout.strip() == "idle"


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stepds_of(conf: Path) -> list[int]:
    marker = f"SLURM_CONF={conf}".encode()
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if (d / "comm").read_text().strip() == "slurmstepd" and marker in (
                d / "environ"
            ).read_bytes().split(b"\0"):
                found.append(int(d.name))
        except OSError:
            pass
    return found


def _job_logs(proj: Path) -> str:
    logs = sorted((proj / ".snakemake" / "slurm_logs").rglob("*.log"))
    return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs)
