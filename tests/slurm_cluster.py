"""A real, throw-away, single-node SLURM cluster on localhost, for tests.

``LocalSlurm(workdir)`` writes every config file, key, socket, log, spool,
state and database file under ``workdir`` and starts, as children of the
current process and each tracked by its PID:

    munged -> mariadbd -> slurmdbd -> (sacctmgr: cluster/account/user)
           -> slurmctld -> slurmd

``stop()`` cancels the cluster's jobs and then terminates exactly those
processes (SIGTERM, then SIGKILL after a grace period), in reverse order.
Nothing outside ``workdir`` is touched except, when ``workdir`` is too deep
for unix-socket paths (108 bytes), one short ``/tmp/ftslurm-*`` directory
holding the sockets and slurmd's spool, which ``stop()`` removes again.

Clients (``sbatch``, ``sacct``, ``snakemake --executor slurm`` ...) talk to
this cluster when they get ``LocalSlurm.env`` (which sets ``SLURM_CONF``).

Usage::

    ok, why = available()
    with LocalSlurm(tmp_path) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)
        rows = cluster.sacct_jobs()

Must run as root (slurmd needs it; every daemon runs as root, SlurmUser=root).
"""

from __future__ import annotations

import atexit
import csv
import getpass
import io
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = [
    "DEFAULT_SACCT_FIELDS",
    "FINAL_STATES",
    "LocalSlurm",
    "REQUIRED_BINARIES",
    "SlurmClusterError",
    "available",
    "parse_tres",
]

#: binary -> Debian package that provides it
REQUIRED_BINARIES: dict[str, str] = {
    "munged": "munge",
    "munge": "munge",
    "slurmctld": "slurmctld (slurm-wlm)",
    "slurmd": "slurmd (slurm-wlm)",
    "slurmdbd": "slurmdbd",
    "sbatch": "slurm-client (slurm-wlm)",
    "sacct": "slurm-client (slurm-wlm)",
    "sacctmgr": "slurm-client (slurm-wlm)",
    "sinfo": "slurm-client (slurm-wlm)",
    "scontrol": "slurm-client (slurm-wlm)",
    "squeue": "slurm-client (slurm-wlm)",
    "scancel": "slurm-client (slurm-wlm)",
    "srun": "slurm-client (slurm-wlm)",
}
_CLIENT_COMMANDS = (
    "sbatch", "srun", "salloc", "sacct", "sacctmgr", "sinfo", "squeue", "scontrol",
    "scancel", "sstat", "sshare", "sprio", "sreport", "sattach", "sbcast", "sdiag",
)  # fmt: skip
# subdirectories of workdir that LocalSlurm owns (recreated by every start())
_OWN_SUBDIRS = ("etc", "log", "run", "bin", "statesave", "spool", "munge", "gpus", "mysql")
# ... of which stop() removes these (etc/ and log/ stay for post-mortems)
_VOLATILE_SUBDIRS = ("run", "statesave", "spool", "mysql", "munge")
_MARIADB_SERVER = ("mariadbd", "mysqld")
_MARIADB_INSTALL_DB = ("mariadb-install-db", "mysql_install_db")

# Environment variables that would make client commands behave differently
# (e.g. a test session itself running inside a SLURM job, or a user's
# SQUEUE_FORMAT); they are dropped from ``LocalSlurm.env``.
_CLIENT_ENV_PREFIXES = (
    "SLURM_",
    "SBATCH_",
    "SALLOC_",
    "SRUN_",
    "SQUEUE_",
    "SACCT_",
    "SINFO_",
    "SCONTROL_",
    "SACCTMGR_",
)

DEFAULT_SACCT_FIELDS = (
    "JobID",
    "JobIDRaw",
    "JobName",
    "Partition",
    "Account",
    "User",
    "State",
    "ExitCode",
    "AllocCPUS",
    "AllocTRES",
    "ReqTRES",
    "ReqMem",
    "Timelimit",
    "Elapsed",
    "NodeList",
    "Comment",
    "WorkDir",
)


#: job states after which a job will not run again
FINAL_STATES = frozenset(
    {
        "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
        "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",
    }
)  # fmt: skip


class SlurmClusterError(RuntimeError):
    """The local cluster failed to start (message includes daemon log tails)."""


def _which_any(names: Iterable[str]) -> str | None:
    for name in names:
        # the daemons live in /usr/sbin, which is not always on a user's PATH
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
        if path:
            return path
    return None


def _which(name: str) -> str | None:
    return _which_any([name])


def available() -> tuple[bool, str]:
    """Whether a local cluster can be started here: (ok, reason-if-not).

    Says no only when the system packages (or root rights) are missing; see
    ``scripts/install-system-deps.sh``.
    """
    missing = sorted({pkg for b, pkg in REQUIRED_BINARIES.items() if _which(b) is None})
    if _which_any(_MARIADB_SERVER) is None or _which_any(_MARIADB_INSTALL_DB) is None:
        missing.append("mariadb-server")
    if missing:
        return False, (
            "local SLURM cluster unavailable, missing Debian packages: "
            + ", ".join(missing)
            + " (run scripts/install-system-deps.sh)"
        )
    if os.geteuid() != 0:
        return False, "local SLURM cluster needs root (slurmd must run as root)"
    return True, ""


def _free_ports(n: int) -> list[int]:
    """n distinct currently-free TCP ports on 127.0.0.1 (kernel-chosen)."""
    socks, ports = [], []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _mem_total_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("cannot read MemTotal from /proc/meminfo")


def _tail(path: Path, n: int = 30) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"    <cannot read: {exc}>"
    return "\n".join("    " + line for line in lines[-n:]) or "    <empty>"


class _Daemon:
    def __init__(self, name: str, proc: subprocess.Popen, log: Path):
        self.name, self.proc, self.log = name, proc, log

    @property
    def pid(self) -> int:
        return self.proc.pid


class LocalSlurm:
    """A single-node SLURM cluster (with accounting and 4 fake GPUs) under ``workdir``.

    Attributes (valid after ``start()``):
        env            environment for client subprocesses (sets SLURM_CONF)
        conf_path      path of slurm.conf
        partition      default partition name (``"debug"``)
        account        SLURM account registered for the current user (``"ftflow"``)
        cluster_name   ClusterName (``"ftflowtest"``)
        node_name      the single node's name (``"localnode"``)
        cpus           node CPUs (= ``os.cpu_count()``)
        real_memory    node RealMemory in MB
        n_gpus         number of fake GPUs (gres/gpu) on the node
        pids           {daemon name: PID} of the processes this object started
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        cluster_name: str = "ftflowtest",
        partition: str = "debug",
        account: str = "ftflow",
        node_name: str = "localnode",
        n_gpus: int = 4,
        def_mem_per_cpu: int = 256,
        max_time: str = "2-00:00:00",
        startup_timeout: float = 90.0,
        extra_slurm_conf: str = "",
    ):
        self.workdir = Path(workdir).resolve()
        self.cluster_name = cluster_name
        self.partition = partition
        self.account = account
        self.node_name = node_name
        self.n_gpus = n_gpus
        self.def_mem_per_cpu = def_mem_per_cpu
        self.max_time = max_time
        self.startup_timeout = startup_timeout
        self.extra_slurm_conf = extra_slurm_conf

        self.cpus = os.cpu_count() or 1
        total = _mem_total_mb()
        self.real_memory = max(512, min(int(total * 0.9), total - 512))

        self.etc = self.workdir / "etc"
        self.logdir = self.workdir / "log"
        self.rundir = self.workdir / "run"
        self.conf_path = self.etc / "slurm.conf"
        # the snakemake slurm plugin validates accounts for getpass.getuser()
        self.user = getpass.getuser()

        self._daemons: list[_Daemon] = []
        self._sockdir: Path | None = None
        self._own_sockdir = False
        self._started = False
        self.env: dict[str, str] = {}
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self.timings: dict[str, float] = {}  # seconds per start() phase

    # ------------------------------------------------------------------ api
    @property
    def pids(self) -> dict[str, int]:
        return {d.name: d.pid for d in self._daemons}

    def __enter__(self) -> LocalSlurm:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> LocalSlurm:
        if self._started:
            return self
        ok, why = available()
        if not ok:
            raise SlurmClusterError(why)
        t0 = time.monotonic()
        self._deadline = t0 + self.startup_timeout
        atexit.register(self.stop)
        self._started = True
        try:
            for step in (
                self._prepare,
                self._start_munge,
                self._start_mariadb,
                self._start_slurmdbd,
                self._register_accounting,
                self._start_slurmctld,
                self._start_slurmd,
                self._wait_ready,
            ):
                t = time.monotonic()
                step()
                self.timings[step.__name__.lstrip("_")] = round(time.monotonic() - t, 2)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Cancel this cluster's jobs, stop the daemons this object started, clean up."""
        if not self._started:
            return
        self._started = False
        try:
            atexit.unregister(self.stop)
        except Exception:  # pragma: no cover
            pass
        running = {d.name for d in self._daemons if d.proc.poll() is None}
        if {"slurmctld", "slurmd"} <= running:
            self._cancel_all_jobs()
        # reverse start order: slurmd, slurmctld, slurmdbd, mariadbd, munged
        for d in reversed(self._daemons):
            self._terminate(d)
        self._daemons.clear()
        self._kill_leftover_stepds()
        if self._own_sockdir and self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
        for sub in _VOLATILE_SUBDIRS:
            shutil.rmtree(self.workdir / sub, ignore_errors=True)

    # client helpers --------------------------------------------------------
    def run(
        self, args: Sequence[str], *, check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        """Run a client command against this cluster (text mode, captured output)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        res = subprocess.run(list(args), env=self.env, timeout=timeout, **kw)
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(
                res.returncode, res.args, output=res.stdout, stderr=res.stderr
            )
        return res

    def sbatch(self, args: Sequence[str] = (), script: str | None = None, **kw) -> str:
        """Submit with ``sbatch --parsable``; ``script`` goes to stdin. Returns the job id."""
        res = self.run(["sbatch", "--parsable", *args], input=script, **kw)
        return res.stdout.strip().split(";")[0]

    def wait_job(self, job_id: str, timeout: float = 120, poll: float = 0.5) -> dict[str, str]:
        """Wait until sacct has the final, complete record of ``job_id``; return its row.

        "Complete": slurmdbd may first hold a placeholder (JobName
        ``allocation``, empty Partition/Timelimit) built from step records
        when a short job ends before the job-start message was stored; the
        real values follow within seconds.
        """
        deadline = time.monotonic() + timeout
        rows: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            rows = self.sacct_jobs([job_id])
            if rows:
                row = rows[0]
                state = row["State"].split()[0] if row["State"] else ""
                if state in FINAL_STATES and row["Partition"] and row["Timelimit"]:
                    return row
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not finished after {timeout}s; sacct: {rows}")

    def sacct_jobs(
        self,
        job_ids: Iterable[str] | None = None,
        *,
        fields: Sequence[str] = DEFAULT_SACCT_FIELDS,
        allocations_only: bool = True,
        extra_args: Sequence[str] = (),
    ) -> list[dict[str, str]]:
        """Rows from ``sacct --parsable2`` (all users, since 2000), one dict per line."""
        args = [
            "sacct", "--parsable2", "--allusers", "--starttime", "2000-01-01T00:00:00",
            "--format", ",".join(fields),
        ]  # fmt: skip
        if allocations_only:
            args.append("--allocations")
        if job_ids:
            args += ["--jobs", ",".join(str(j) for j in job_ids)]
        args += list(extra_args)
        out = self.run(args, timeout=30).stdout
        reader = csv.DictReader(io.StringIO(out), delimiter="|")
        return [dict(row) for row in reader]

    def scontrol_job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job -o`` parsed into a dict (while slurmctld remembers the job)."""
        out = self.run(["scontrol", "show", "job", "-o", str(job_id)], timeout=30).stdout
        return _parse_scontrol_kv(out)

    def squeue_ids(self) -> list[str]:
        out = self.run(["squeue", "-h", "-o", "%i"], timeout=30).stdout
        return out.split()

    def logs_tail(self, n: int = 30) -> str:
        """The last ``n`` lines of every daemon log (``*.out.log``: their stdout/stderr)."""
        parts = []
        for path in sorted(self.logdir.glob("*.log")) if self.logdir.exists() else []:
            k = min(n, 10) if path.name.endswith(".out.log") else n
            parts.append(f"--- {path} (last {k} lines) ---\n{_tail(path, k)}")
        return "\n".join(parts)

    # ------------------------------------------------------------ internals
    def _prepare(self) -> None:
        # every start is a fresh cluster: job ids restart at 1, so old job
        # state and accounting rows must go too (other files in workdir stay)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in _OWN_SUBDIRS:
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
            (self.workdir / sub).mkdir()
        # secrets (munge key, DB password) and sockets: root only
        for d in (self.etc, self.rundir, self.workdir / "munge"):
            os.chmod(d, 0o700)

        # unix sockets: sun_path is limited to 108 bytes.  Besides munged's and
        # mariadbd's, slurmstepd creates <SlurmdSpoolDir>/<node>_<job>.<step>
        # (else "Unix socket path ... is too long" and the job is requeued
        # forever).  For a deep workdir, put them in a short /tmp/ftslurm-*.
        longest = f"{self.node_name}_4294967294.4294967294"
        if len(str(self.workdir / "spool" / longest)) < 104:
            self._sockdir, self._own_sockdir = self.rundir, False
            self.spooldir = self.workdir / "spool"
        else:
            self._sockdir = Path(tempfile.mkdtemp(prefix="ftslurm-"))
            self._own_sockdir = True
            self.spooldir = self._sockdir / "spool"
            self.spooldir.mkdir()
            if len(str(self.spooldir / longest)) >= 104:
                self._fail(f"no short enough directory for unix sockets: {self._sockdir}")
        self.munge_socket = self._sockdir / "munge.sock"
        self.mysql_socket = self._sockdir / "mysqld.sock"

        ctld, slurmd, dbd, mysql = _free_ports(4)
        self.ports = {"slurmctld": ctld, "slurmd": slurmd, "slurmdbd": dbd, "mysql": mysql}

        gpu_files = self._fake_gpu_devices()

        self.db_password = "ftflow-test-" + os.urandom(6).hex()
        (self.etc / "slurm.conf").write_text(self._slurm_conf())
        (self.etc / "gres.conf").write_text(
            "AutoDetect=off\n"
            + "".join(f"NodeName={self.node_name} Name=gpu File={f}\n" for f in gpu_files)
        )
        dbd_conf = self.etc / "slurmdbd.conf"
        dbd_conf.write_text(self._slurmdbd_conf())
        os.chmod(dbd_conf, 0o600)  # slurmdbd refuses a readable file with a password

        env = {k: v for k, v in os.environ.items() if not k.startswith(_CLIENT_ENV_PREFIXES)}
        env["SLURM_CONF"] = str(self.conf_path)
        env["PATH"] = os.pathsep.join(
            [str(self._write_client_wrappers()), env.get("PATH", "/usr/bin:/bin"), "/usr/sbin"]
        )
        self.env = env

    def _write_client_wrappers(self) -> Path:
        """``workdir/bin/<client>`` scripts that pin SLURM_CONF, then exec the real client.

        Needed because snakemake-executor-plugin-slurm-jobstep (0.6.x) strips
        every ``SLURM_*`` variable except a few job-identity ones, SLURM_CONF
        included, from the environment of the ``srun`` it runs inside the
        job; a real cluster has /etc/slurm/slurm.conf, this one has not.
        """
        bindir = self.workdir / "bin"
        bindir.mkdir(exist_ok=True)
        for name in _CLIENT_COMMANDS:
            real = _which(name)
            if real is None:
                continue
            w = bindir / name
            w.write_text(
                "#!/bin/sh\n# generated by tests/slurm_cluster.py\n"
                f"SLURM_CONF='{self.conf_path}'\nexport SLURM_CONF\nexec '{real}' \"$@\"\n"
            )
            w.chmod(0o755)
        return bindir

    def _fake_gpu_devices(self) -> list[str]:
        """Device files for the fake GPUs, one per GPU: ``gpus/nvidia0..N-1``.

        Findings with slurm 22.05: the gpu plugin drops file-less GPUs
        ("Removing file-less GPU", node then INVAL: "gres/gpu count reported
        lower than configured"); several ``File=/dev/null`` lines are fatal
        ("gpu duplicate device file name"); regular files are accepted with an
        error ("not a valid character or block device") but jobs then get no
        CUDA_VISIBLE_DEVICES.  Symlinks to /dev/null work: slurmd stat()s the
        target (a char device) and takes the CUDA_VISIBLE_DEVICES index from
        the trailing number of the link's name.
        """
        files = []
        for i in range(self.n_gpus):
            f = self.workdir / "gpus" / f"nvidia{i}"
            if f.is_symlink() or f.exists():
                f.unlink()
            f.symlink_to("/dev/null")
            files.append(str(f))
        return files

    def _slurm_conf(self) -> str:
        w = self.workdir
        node = (
            f"NodeName={self.node_name} NodeAddr=127.0.0.1 NodeHostname={self.node_name}"
            f" CPUs={self.cpus} Sockets=1 CoresPerSocket={self.cpus} ThreadsPerCore=1"
            f" RealMemory={self.real_memory} Gres=gpu:{self.n_gpus} State=UNKNOWN"
        )
        partition = (
            f"PartitionName={self.partition} Nodes={self.node_name} Default=YES"
            f" MaxTime={self.max_time} DefaultTime=01:00:00 State=UP"
        )
        return f"""\
# generated by tests/slurm_cluster.py -- throw-away single-node test cluster
ClusterName={self.cluster_name}
SlurmctldHost={socket.gethostname().split(".")[0]}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={self.ports["slurmctld"]}
SlurmdPort={self.ports["slurmd"]}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={w}/statesave
SlurmdSpoolDir={self.spooldir}
SlurmctldPidFile={self.rundir}/slurmctld.pid
SlurmdPidFile={self.rundir}/slurmd.pid
SlurmctldLogFile={self.logdir}/slurmctld.log
SlurmdLogFile={self.logdir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU={self.def_mem_per_cpu}
EnforcePartLimits=ALL
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=20
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.ports["slurmdbd"]}
# for slurmdbd connections the munge socket is taken from here, not AuthInfo
AccountingStoragePass={self.munge_socket}
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobCompType=jobcomp/none
GresTypes=gpu
{node}
{partition}
{self.extra_slurm_conf}
"""

    def _slurmdbd_conf(self) -> str:
        return f"""\
# generated by tests/slurm_cluster.py
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports["slurmdbd"]}
SlurmUser=root
DebugLevel=info
LogFile={self.logdir}/slurmdbd.log
PidFile={self.rundir}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports["mysql"]}
StorageUser=slurm
StoragePass={self.db_password}
StorageLoc=slurm_acct_db
"""

    # daemon management -----------------------------------------------------
    def _spawn(self, name: str, argv: list[str], log: Path | None = None) -> _Daemon:
        log = log or self.logdir / f"{name}.out.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                start_new_session=True,  # ^C in the terminal reaches only pytest
                preexec_fn=_die_with_parent,
            )
        d = _Daemon(name, proc, log)
        self._daemons.append(d)
        return d

    def _check_alive(self) -> None:
        for d in self._daemons:
            rc = d.proc.poll()
            if rc is not None:
                self._fail(f"{d.name} (pid {d.pid}) exited with status {rc}")

    def _fail(self, what: str) -> None:
        raise SlurmClusterError(
            f"local SLURM cluster in {self.workdir} failed to start: {what}\n{self.logs_tail()}"
        )

    def _wait(self, what: str, predicate, poll: float = 0.2) -> None:
        while True:
            self._check_alive()
            try:
                if predicate():
                    return
            except (OSError, subprocess.SubprocessError):
                pass
            if time.monotonic() > self._deadline:
                self._fail(f"timed out after {self.startup_timeout:.0f}s waiting for {what}")
            time.sleep(poll)

    def _terminate(self, d: _Daemon, grace: float = 15.0) -> None:
        proc = d.proc
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass

    def _cancel_all_jobs(self) -> None:
        try:
            ids = self.squeue_ids()
            if ids:
                self.run(["scancel", *ids], check=False, timeout=20)
            deadline = time.monotonic() + 20
            while self.squeue_ids() and time.monotonic() < deadline:
                time.sleep(0.5)
        except (OSError, subprocess.SubprocessError):
            pass

    def _kill_leftover_stepds(self) -> None:
        """SIGKILL slurmstepd processes of *this* cluster that outlived scancel.

        slurmd double-forks slurmstepd per job, so they are not our children;
        they are recognised by SLURM_CONF=<this cluster's slurm.conf> in their
        environment (inherited from the slurmd we started).
        """
        marker = f"SLURM_CONF={self.conf_path}".encode()
        for pid_dir in Path("/proc").glob("[0-9]*"):
            try:
                if (pid_dir / "comm").read_text().strip() != "slurmstepd":
                    continue
                if marker not in (pid_dir / "environ").read_bytes().split(b"\0"):
                    continue
                os.kill(int(pid_dir.name), signal.SIGKILL)
            except (OSError, ValueError):
                continue

    # the individual daemons --------------------------------------------------
    def _start_munge(self) -> None:
        key = self.workdir / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self._spawn(
            "munged",  # --foreground: logs go to log/munged.out.log
            [
                _which("munged"), "--foreground", "--force",
                f"--key-file={key}",
                f"--socket={self.munge_socket}",
                f"--pid-file={self.rundir}/munged.pid",
                f"--seed-file={self.workdir}/munge/munged.seed",
                "--num-threads=2",
            ],
        )  # fmt: skip
        munge, unmunge = _which("munge"), _which("unmunge")

        def ok() -> bool:
            if not self.munge_socket.exists():
                return False
            cred = subprocess.run(
                [munge, "-n", "-S", str(self.munge_socket)], capture_output=True, timeout=5
            )
            if cred.returncode != 0:
                return False
            if unmunge is None:
                return True
            dec = subprocess.run(
                [unmunge, "-S", str(self.munge_socket)], input=cred.stdout,
                capture_output=True, timeout=5,
            )  # fmt: skip
            return dec.returncode == 0

        self._wait("munged", ok)

    def _start_mariadb(self) -> None:
        datadir = self.workdir / "mysql"
        # A temporary folder of its own: two clusters bootstrapping at once in /tmp (test
        # workers) collide on the server's temporary table names.
        tmpdir = self.workdir / "mysql-tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(
            [
                _which_any(_MARIADB_INSTALL_DB), "--no-defaults",
                f"--datadir={datadir}", "--user=root", f"--tmpdir={tmpdir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db", "--skip-name-resolve",
                "--innodb-log-file-size=16M",  # default 96M: a lot for a tmp dir
            ],
            capture_output=True, text=True, timeout=120, cwd=self.workdir,
        )  # fmt: skip
        (self.logdir / "mariadb-install-db.log").write_text(res.stdout + res.stderr)
        if res.returncode != 0:
            self._fail("mariadb-install-db failed")
        init = self.etc / "mysql-init.sql"
        init.write_text(
            "CREATE DATABASE IF NOT EXISTS slurm_acct_db;\n"
            + "".join(
                f"CREATE OR REPLACE USER 'slurm'@'{h}' IDENTIFIED BY '{self.db_password}';\n"
                f"GRANT ALL ON slurm_acct_db.* TO 'slurm'@'{h}';\n"
                for h in ("127.0.0.1", "localhost")
            )
        )
        os.chmod(init, 0o600)
        self._spawn(
            "mariadbd",
            [
                _which_any(_MARIADB_SERVER), "--no-defaults",
                f"--datadir={datadir}", "--user=root", f"--tmpdir={tmpdir}",
                f"--socket={self.mysql_socket}",
                f"--port={self.ports['mysql']}", "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                f"--pid-file={self.rundir}/mariadbd.pid",
                f"--log-error={self.logdir}/mariadbd.log",
                f"--init-file={init}",
                "--innodb-buffer-pool-size=128M",
                "--innodb-log-file-size=16M",
                "--innodb-lock-wait-timeout=900",
                "--max-allowed-packet=16M",
            ],
        )  # fmt: skip
        self._wait(
            "mariadbd", lambda: self.mysql_socket.exists() and _port_open(self.ports["mysql"])
        )

    def _start_slurmdbd(self) -> None:
        self._spawn("slurmdbd", [_which("slurmdbd"), "-D"])
        self._wait("slurmdbd", lambda: _port_open(self.ports["slurmdbd"]))

    def _register_accounting(self) -> None:
        """cluster, account and user associations, before slurmctld starts."""
        users = {self.user, _current_user(), "root"}
        cmds = [
            ["sacctmgr", "-i", "add", "cluster", self.cluster_name],
            ["sacctmgr", "-i", "add", "account", self.account, f"Cluster={self.cluster_name}",
             "Description=ftflow tests", "Organization=ftflow"],
            ["sacctmgr", "-i", "add", "user", ",".join(sorted(users)),
             f"Account={self.account}", f"DefaultAccount={self.account}",
             f"Cluster={self.cluster_name}"],
        ]  # fmt: skip
        for cmd in cmds:
            last: list[subprocess.CompletedProcess] = []

            def ok(cmd=cmd, last=last) -> bool:
                res = self.run(cmd, check=False, timeout=30)
                last[:] = [res]
                # sacctmgr exits 1 with "Nothing new added" when it already exists
                text = res.stdout + res.stderr
                return (
                    res.returncode == 0 or "Nothing new added" in text or "already exists" in text
                )

            try:
                self._wait(" ".join(cmd), ok, poll=0.5)
            except SlurmClusterError as exc:
                if last:
                    raise SlurmClusterError(
                        f"{exc}\nlast output of {' '.join(cmd)}:\n{last[0].stdout}{last[0].stderr}"
                    ) from None
                raise

    def _start_slurmctld(self) -> None:
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])

        def ok() -> bool:
            res = self.run(["scontrol", "ping"], check=False, timeout=10)
            return res.returncode == 0 and "UP" in res.stdout

        self._wait("slurmctld (scontrol ping)", ok)

    def _start_slurmd(self) -> None:
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node_name])

    def _wait_ready(self) -> None:
        def node_idle() -> bool:
            res = self.run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, timeout=10)
            states = dict(line.split() for line in res.stdout.splitlines() if line.strip())
            state = states.get(self.node_name, "").rstrip("*~#$@^-!%")
            if state in ("inval", "drain", "drained", "drng", "fail"):
                reason = self.run(["sinfo", "-R"], check=False, timeout=10).stdout
                self._fail(f"node {self.node_name} is {state}:\n{reason}")
            return state == "idle"

        self._wait(f"node {self.node_name} idle in sinfo", node_idle, poll=0.3)

        def sacct_ok() -> bool:
            res = self.run(["sacct", "-n", "-X", "-a"], check=False, timeout=10)
            return res.returncode == 0

        self._wait("sacct to answer", sacct_ok)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the thread that started it dies.

    So that a SIGKILLed test run (e.g. a CI timeout, where atexit does not
    run) does not leave the daemons behind.  Caveat of PR_SET_PDEATHSIG: it
    fires when the starting *thread* ends, so start the cluster from a thread
    that outlives it (pytest fixtures run in the main thread).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort only
        pass


def parse_tres(tres: str) -> dict[str, str]:
    """``"billing=1,cpu=1,gres/gpu=2,mem=500M"`` -> ``{"billing": "1", "cpu": "1", ...}``."""
    out = {}
    for item in filter(None, tres.split(",")):
        k, _, v = item.partition("=")
        out[k] = v
    return out


def _parse_scontrol_kv(text: str) -> dict[str, str]:
    """Parse ``Key=Value Key2=Value two ...`` (values may contain spaces)."""
    out: dict[str, str] = {}
    key = None
    for tok in text.split():
        k, sep, v = tok.partition("=")
        if sep and k and (k[0].isupper() or k[0] == "_") and "/" not in k:
            key = k
            out[key] = v
        elif key is not None:
            out[key] += " " + tok
    return out


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
