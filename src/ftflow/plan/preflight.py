"""Preflight: every SLURM job of the current plan checked with ``sbatch --test-only``.

``snakemake --profile slurm preflight`` asks SLURM, before anything is submitted, whether
it could run each compute job the plan would submit, with exactly the options the SLURM
executor plugin would pass to ``sbatch``:

- the jobs are the plan's (:mod:`ftflow.plan.snakemake_dag`, built in-process as
  ``snakemake -n`` builds them): every job that would run, minus the local rules (they
  run on the login node, never through ``sbatch``);
- their resources are evaluated with the settings of the running ``snakemake`` (the
  profile's ``default-resources``, ``$VARIABLES`` expanded from the environment as
  Snakemake does, ``--set-resources``, ``--set-threads``, ``--jobs``), which the rule
  hands over as plain data (:func:`settings_of`);
- the ``sbatch`` line is the plugin's own (``get_submit_command`` and
  ``set_gres_string``, from the installed ``snakemake-executor-plugin-slurm``, with the
  running profile's executor settings: requeue, QoS, reservation, excluded nodes), with
  ``--parsable`` turned into ``--test-only``. SLURM then checks the request against the
  partition, the nodes and the associations and answers "Job N to start at …", or why
  not: "Requested node configuration is not available" (more GPUs or CPUs than a node
  has), "Requested time limit is invalid" (over the partition's MaxTime), "Invalid account
  or account/partition combination specified", "Invalid qos specification". Those words,
  SLURM's own, are the verdict of each job.

Two deliberate differences from a real submission, neither of them a resource: the
command is ``--wrap=true`` (``--test-only`` never runs it), and a given account is passed
as given — the plugin would first look it up with ``sacctmgr`` and refuse it with a
message of its own; here SLURM judges it. A job whose later attempts ask for other
resources (``retries`` with a ``retry_runtime``) is checked once per distinct request.

Nothing is ever submitted: every ``sbatch`` call carries ``--test-only`` (checked before
the call). The report goes to ``results/plan/preflight.json`` and ``.txt``; they are not
declared outputs, because Snakemake deletes a failed job's outputs and a failed preflight
is exactly the one whose report is needed. Raises :class:`PreflightError` when a job
cannot be satisfied, listing those jobs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftflow import files, paths
from ftflow.plan.model import PlanError, PlannedJob
from ftflow.plan.snakemake_dag import DagRequest, built_dag

PREFLIGHT_JSON = paths.RESULTS / "plan" / "preflight.json"
PREFLIGHT_TXT = paths.RESULTS / "plan" / "preflight.txt"
EXECUTOR = "slurm"
# What --test-only runs in place of the job's command: nothing (SLURM never starts it).
TEST_COMMAND = "--wrap=true"
_UNSET_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")

log = logging.getLogger("ftflow.preflight")


class PreflightError(PlanError):
    """A job of the plan cannot be run by SLURM as requested (or preflight cannot run)."""


@dataclass(frozen=True)
class Request:
    """One ``sbatch`` submission the plugin would make, as a ``--test-only`` argv."""

    rule: str
    wildcards: Mapping[str, str]
    attempt: int
    argv: tuple[str, ...] = ()  # sbatch --test-only <the plugin's options> --wrap=true
    problem: str = ""  # the plugin refused to build the request; nothing to ask SLURM

    @property
    def run(self) -> str:
        return PlannedJob(self.rule, self.wildcards, "run", 1, 0, None).run

    @property
    def options(self) -> list[str]:
        """The plugin's sbatch options (no program name, no --test-only, no command)."""
        return [a for a in self.argv[1:] if a not in ("--test-only", TEST_COMMAND)]


@dataclass(frozen=True)
class Verdict:
    request: Request
    ok: bool
    message: str  # SLURM's own words (sbatch's stderr), or the plugin's refusal

    def as_dict(self) -> dict[str, Any]:
        r = self.request
        return {
            "rule": r.rule,
            "run": r.run,
            "wildcards": dict(r.wildcards),
            "attempt": r.attempt,
            "ok": self.ok,
            "message": self.message,
            "sbatch": shlex.join(r.options),
        }


@dataclass
class Preflight:
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def impossible(self) -> list[Verdict]:
        return [v for v in self.verdicts if not v.ok]

    @property
    def ok(self) -> bool:
        return not self.impossible


# ---------------------------------------------------------------- the running settings


def _args(resources) -> list[str]:
    return list(resources.args) if resources is not None else []


def settings_of(workflow) -> dict[str, Any]:
    """The running Snakemake's executor and resource settings, as plain data.

    Called from the ``preflight`` rule (its job runs in a script process of its own,
    which rebuilds them with :func:`resource_settings` and :func:`executor_settings`).
    """
    plugin = workflow.executor_plugin
    rs = workflow.resource_settings
    es = workflow.executor_settings
    executor = None if plugin is None else plugin.name
    return {
        "executor": executor,
        "cores": rs.cores,
        "nodes": rs.nodes,
        "max_threads": rs.max_threads,
        "resources": _args(rs.resources),
        "default_resources": None if rs.default_resources is None
        else _args(rs.default_resources),
        "set_resources": [f"{rule}:{arg}" for rule, res in rs.overwrite_resources.items()
                          for arg in _args(res)],
        "set_threads": [f"{rule}={r.raw}" for rule, r in rs.overwrite_threads.items()],
        "executor_settings": {
            f.name: (str(v) if isinstance(v, Path) else v)
            for f in dataclasses.fields(es)
            for v in [getattr(es, f.name)]
        } if executor == EXECUTOR and es is not None else None,
        "retries": workflow.execution_settings.retries,  # --retries, for rules without
        "workdir": str(workflow.workdir_init),
    }  # fmt: skip


def resource_settings(settings: Mapping[str, Any]):
    """Snakemake's ``ResourceSettings`` rebuilt as its command line builds them."""
    from snakemake.cli import parse_set_resources, parse_set_threads
    from snakemake.resources import Resources
    from snakemake.settings.types import ResourceSettings

    default = settings.get("default_resources")
    return ResourceSettings(
        cores=settings.get("cores"),
        nodes=settings.get("nodes"),
        max_threads=settings.get("max_threads"),
        resources=Resources.parse(settings.get("resources") or [], allow_expressions=False),
        overwrite_threads=parse_set_threads(settings.get("set_threads") or None),
        overwrite_resources=parse_set_resources(settings.get("set_resources") or None),
        # a remote executor without --default-resources gets the full defaults
        default_resources=Resources.parse(default or [], allow_expressions=True, defaults="full"),
    )


def executor_settings(settings: Mapping[str, Any]):
    """The plugin's ``ExecutorSettings`` of the running profile."""
    from snakemake_executor_plugin_slurm import ExecutorSettings

    if settings.get("executor") != EXECUTOR or settings.get("executor_settings") is None:
        raise PreflightError(
            f"preflight checks the jobs the SLURM executor would submit, but this snakemake "
            f"runs with executor {settings.get('executor')!r}: run it as "
            f"`snakemake --profile slurm preflight`"
        )
    values = dict(settings["executor_settings"])
    for name in ("logdir", "partition_config"):
        if values.get(name) is not None:
            values[name] = Path(values[name])
    return ExecutorSettings(**values)


# ------------------------------------------------------------------- the sbatch lines


def _is_local(workflow, job) -> bool:
    """Runs where Snakemake runs, never through sbatch (``Workflow.is_local`` for a remote
    executor: the in-process DAG has none, for which Snakemake counts every rule local)."""
    rule = job.rule
    return rule.group is None and (
        rule.name in workflow._localrules or rule.norun or rule.is_template_engine
    )


def _unset_variables(job) -> list[str]:
    """``$NAME`` left in a string resource: the variable is not set (expandvars keeps it)."""
    found = []
    for name, value in job.resources.items():
        if isinstance(value, str):
            found += [
                f"{var} (resource {name})"
                for var in _UNSET_VARIABLE.findall(value)
                if var not in os.environ
            ]
    return found


def _account_arg(job) -> str:
    """The plugin's ``-A``: the first of the job's ``slurm_account`` (passed as given:
    SLURM judges it), or the account the plugin would guess from the user's last jobs."""
    from snakemake_executor_plugin_slurm.accounts import get_account

    given = job.resources.get("slurm_account")
    if given:
        account = next(a for a in re.split(r"[,\s]+", str(given)) if a)
    else:
        account = get_account(log)
    return f" -A {shlex.quote(str(account))}" if account else ""


def _partition_arg(job, settings) -> str:
    """The plugin's ``-p``, by the plugin's own method (partition file, default partition)."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm import Executor
    from snakemake_executor_plugin_slurm.partitions import read_partition_file

    partition_file = settings.partition_config or os.environ.get("SNAKEMAKE_SLURM_PARTITIONS")
    state = SimpleNamespace(
        logger=log,
        _partitions=read_partition_file(Path(partition_file)) if partition_file else None,
        _fallback_partition=None,
    )
    return Executor.get_partition_arg(state, job)


def submit_line(job, settings, workdir: Path, run_uuid: str) -> str:
    """The ``sbatch`` line the plugin's ``run_job`` builds for ``job`` (without its
    command): ``get_submit_command`` + ``set_gres_string``, the same parameters."""
    from types import SimpleNamespace

    from snakemake_executor_plugin_slurm import _select_logdir
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import get_job_wildcards, set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    group_or_rule = f"group_{job.name}" if job.is_group() else f"rule_{job.name}"
    wildcard_str = get_job_wildcards(job)
    logdir = _select_logdir(SimpleNamespace(executor_settings=settings, workdir_init=workdir))
    validate_slurm_extra(job)
    params = {
        "run_uuid": run_uuid,
        "slurm_logfile": logdir / group_or_rule / wildcard_str / "%j.log",
        "comment_str": f"rule_{job.name}" + (f"_wildcards_{wildcard_str}" if wildcard_str else ""),
        "account": _account_arg(job),
        "partition": _partition_arg(job, settings),
        "workdir": workdir,
    }
    failed_nodes = {n.strip() for n in (settings.exclude_failed_nodes or "").split(",")
                    if n.strip()}  # fmt: skip
    call = get_submit_command(job, params, settings=settings, failed_nodes=failed_nodes)
    return call + set_gres_string(job)


def test_only_argv(line: str) -> tuple[str, ...]:
    """The plugin's ``sbatch --parsable …`` line as a ``sbatch --test-only …`` argv."""
    argv = shlex.split(line)
    if argv[:2] != ["sbatch", "--parsable"]:
        raise PreflightError(f"unexpected sbatch line from the SLURM executor plugin: {line}")
    return ("sbatch", "--test-only", *argv[2:], TEST_COMMAND)


def _run_uuid(settings) -> str:
    run_uuid = str(uuid.uuid4())
    prefix = settings.jobname_prefix
    return f"{prefix}_{run_uuid}" if prefix else run_uuid


def _requests(workflow, dag, jobs, settings, workdir: Path, retries: int) -> list[Request]:
    from snakemake_interface_common.exceptions import WorkflowError

    run_uuid = _run_uuid(settings)
    requests = []
    for job in jobs:
        if not dag.needrun(job) or _is_local(workflow, job):
            continue
        wildcards = {k: str(v) for k, v in job.wildcards_dict.items()}
        seen = set()
        restarts = job.rule._restart_times  # the rule's `retries:` (None: --retries)
        for attempt in range(1, (retries if restarts is None else restarts) + 2):
            job.attempt = attempt  # resources may depend on the attempt (retry_runtime)
            unset = _unset_variables(job)
            if unset:
                problem = "environment variable not set: " + ", ".join(unset)
                requests.append(Request(job.rule.name, wildcards, attempt, problem=problem))
                break
            try:
                argv = test_only_argv(submit_line(job, settings, workdir, run_uuid))
            except WorkflowError as error:
                message = f"the SLURM executor plugin refuses the job: {error}"
                requests.append(Request(job.rule.name, wildcards, attempt, problem=message))
                break
            key = tuple(a for a in argv if not a.startswith("--job-name"))
            if key not in seen:
                seen.add(key)
                requests.append(Request(job.rule.name, wildcards, attempt, argv))
        job.attempt = 1
    return requests


def plan_requests(settings: Mapping[str, Any], request: DagRequest) -> list[Request]:
    """The ``sbatch --test-only`` request of every compute job the plan of ``request`` would
    submit."""
    slurm = executor_settings(settings)
    with built_dag(request, resource_settings(settings)) as (workflow, dag, jobs):
        workdir = Path(workflow.workdir_init)
        return _requests(workflow, dag, jobs, slurm, workdir, settings.get("retries") or 0)


# ------------------------------------------------------------------ asking SLURM


def ask_slurm(request: Request, env: Mapping[str, str] | None = None) -> Verdict:
    """SLURM's verdict on one request, from ``sbatch --test-only`` (never a submission)."""
    if request.problem:
        return Verdict(request, False, request.problem)
    argv = list(request.argv)
    if argv[:2] != ["sbatch", "--test-only"]:  # the one guard against a real submission
        raise PreflightError(f"refusing to run an sbatch line without --test-only: {argv}")
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env=dict(env or os.environ)
        )
    except FileNotFoundError as error:
        raise PreflightError(
            f"sbatch not found ({error}): run preflight on a login node"
        ) from error
    except subprocess.TimeoutExpired:
        return Verdict(request, False, "sbatch --test-only did not answer within 120 s")
    message = " ".join((proc.stderr.strip() or proc.stdout.strip()).split())
    return Verdict(request, proc.returncode == 0, message)


def check(requests: Iterable[Request], env: Mapping[str, str] | None = None) -> Preflight:
    return Preflight([ask_slurm(r, env) for r in requests])


# ------------------------------------------------------------------------- report


def format_report(result: Preflight) -> str:
    lines = [
        f"ftflow preflight: {len(result.verdicts)} sbatch request(s), "
        f"{len(result.impossible)} impossible; nothing was submitted",
        "",
    ]
    for v in result.verdicts:
        r = v.request
        attempt = f" (attempt {r.attempt})" if r.attempt > 1 else ""
        lines += [
            f"{'ok  ' if v.ok else 'FAIL'} {r.rule} {r.run}{attempt}",
            f"     sbatch {shlex.join(r.options)}" if r.argv else "     (no sbatch line)",
            f"     {v.message}",
        ]
    return "\n".join(lines) + "\n"


def write_report(result: Preflight, workdir: Path | None = None) -> tuple[Path, Path]:
    root = Path(workdir) if workdir else Path()
    json_path, txt_path = root / PREFLIGHT_JSON, root / PREFLIGHT_TXT
    json_path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(json_path, {"ok": result.ok, "jobs": [v.as_dict() for v in result.verdicts]})
    files.write_text(txt_path, format_report(result))
    return json_path, txt_path


def main(settings: Mapping[str, Any], request: DagRequest, *, stream=None) -> Preflight:
    """Check every SLURM job of the plan, write and print the report; raise
    :class:`PreflightError` naming the impossible jobs when there are any."""
    result = check(plan_requests(settings, request))
    json_path, _ = write_report(result, request.workdir)
    print(format_report(result) + f"\nwritten to {json_path}", file=stream or sys.stdout,
          flush=True)  # fmt: skip
    if not result.ok:
        listed = "\n".join(
            f"  {v.request.rule} {v.request.run}: {v.message}" for v in result.impossible
        )
        raise PreflightError(
            f"{len(result.impossible)} of {len(result.verdicts)} SLURM job(s) cannot run as "
            f"requested (nothing was submitted; see {json_path}):\n{listed}"
        )
    return result
