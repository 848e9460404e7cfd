"""What the current config and state would run, and what it would cost — without running it.

Snakemake itself decides which jobs would run: the workflow is loaded and its DAG built
in-process through the Snakemake API, exactly as ``snakemake -n`` does (same config
merging, same rerun triggers, incomplete outputs counted as to be rerun), but nothing is
executed, locked or submitted. For every job the plan lists

- the rule and the run identity (its wildcards, ``model/method/dataset/seed`` for a run),
- nodes × GPUs per node and the runtime limit in minutes,
- GPU-hours = nodes × GPUs per node × runtime / 60 (the scheduler reservation, an upper
  bound: a job that finishes early is billed less on most clusters),
- ``run`` or ``done``: a job whose outputs are up to date is listed as done and not counted.

Training jobs take their resources from the method config
(``methods.<m>.resources``: ``nodes``, ``gpus_per_node``, ``runtime``; ``retry_runtime``
is listed but not counted — a first attempt is planned, not a retry); every other rule
counts what the rule declares (``nodes``, and ``gpu`` = GPUs of the whole job or
``gres: gpu[:type]:N`` per node, as the SLURM executor reads them). Totals come per
rule, per model and overall, with a cost when ``plan_cost_per_gpu_hour`` is set (or
``--cost-per-gpu-hour`` given). The ``plan`` rule itself and rules that run nothing
(``all``) are never counted.

Usage, from the repository root, before anything exists::

    python -m ftflow.plan                                   # config/config.yaml
    python -m ftflow.plan --configfile config/experiments/X.yaml
    snakemake plan --forcerun plan --cores 1                        # the same, as a local rule

Writes ``results/plan/plan.csv``: one ``row=job`` line per job, then ``row=rule``,
``row=model`` and one ``row=total`` line with the totals.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftflow import paths

PLAN_CSV = paths.RESULTS / "plan" / "plan.csv"
COST_KEY = "plan_cost_per_gpu_hour"
TRAINING_RULES = frozenset({"train"})  # resources from config["methods"][m]["resources"]
SKIPPED_RULES = frozenset({"plan"})  # the plan never plans itself
RUN_WILDCARDS = ("model", "method", "dataset", "seed")
MAX_JOB_LINES = 60  # terminal: list single jobs up to this many, summaries always

CSV_COLUMNS = (
    "row",
    "rule",
    "run",
    "model",
    "method",
    "dataset",
    "seed",
    "status",
    "nodes",
    "gpus_per_node",
    "gpus",
    "runtime_min",
    "retry_runtime_min",
    "gpu_hours",
    "cost",
    "jobs_to_run",
    "jobs_done",
    "reason",
)


class PlanError(RuntimeError):
    """The workflow could not be planned (invalid config, missing input, …)."""


# ----------------------------------------------------------------------------- model


@dataclass(frozen=True)
class DagJob:
    """What Snakemake says about one job of the DAG (plain data, no Snakemake objects)."""

    rule: str
    wildcards: Mapping[str, str]
    needrun: bool
    resources: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class PlannedJob:
    rule: str
    wildcards: Mapping[str, str]
    status: str  # "run" | "done"
    nodes: int
    gpus_per_node: int
    runtime_min: int | None
    retry_runtime_min: int | None = None
    reason: str = ""

    @property
    def run(self) -> str:
        """The run identity: ``model/method/dataset/seed<seed>``, else the wildcard values."""
        w = self.wildcards
        if all(k in w for k in RUN_WILDCARDS):
            return f"{w['model']}/{w['method']}/{w['dataset']}/seed{w['seed']}"
        return "/".join(str(v) for v in w.values()) or "-"

    @property
    def model(self) -> str:
        return str(self.wildcards.get("model", ""))

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def counted(self) -> bool:
        return self.status == "run"

    @property
    def gpu_hours(self) -> float:
        """Reserved GPU-hours of the first attempt; 0 for a done job."""
        if not self.counted or not self.runtime_min:
            return 0.0
        return self.gpus * self.runtime_min / 60


@dataclass(frozen=True)
class Total:
    key: str
    jobs_to_run: int
    jobs_done: int
    gpu_hours: float


@dataclass
class Plan:
    jobs: list[PlannedJob]
    cost_per_gpu_hour: float | None = None

    @property
    def gpu_hours(self) -> float:
        return sum(j.gpu_hours for j in self.jobs)

    @property
    def cost(self) -> float | None:
        return self.cost_of(self.gpu_hours)

    def cost_of(self, gpu_hours: float) -> float | None:
        if self.cost_per_gpu_hour is None:
            return None
        return gpu_hours * self.cost_per_gpu_hour

    def _totals(self, key) -> list[Total]:
        groups: dict[str, list[PlannedJob]] = {}
        for job in self.jobs:
            groups.setdefault(key(job), []).append(job)
        return [
            Total(
                name,
                sum(j.counted for j in jobs),
                sum(not j.counted for j in jobs),
                sum(j.gpu_hours for j in jobs),
            )
            for name, jobs in groups.items()
        ]

    def by_rule(self) -> list[Total]:
        """Per rule, in pipeline order (the order the jobs are listed)."""
        return self._totals(lambda j: j.rule)

    def by_model(self) -> list[Total]:
        """Per model; jobs without a model (datasets, the report) under ``-``."""
        return sorted(self._totals(lambda j: j.model or "-"), key=lambda t: (t.key == "-", t.key))

    def total(self) -> Total:
        return Total(
            "total",
            sum(j.counted for j in self.jobs),
            sum(not j.counted for j in self.jobs),
            self.gpu_hours,
        )


# ------------------------------------------------------------------------- resources


def _int(value: Any, default: int | None = 0) -> int | None:
    if value is None or isinstance(value, bool):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return int(float(value))
        except (TypeError, ValueError):
            return default


def _gres_gpus(gres: Any) -> int:
    """GPUs per node from a SLURM gres string: ``gpu:4`` or ``gpu:a100:4`` (``gpu`` = 1)."""
    for part in str(gres or "").split(","):
        spec = part.strip().split(":")
        if spec[0] == "gpu":
            return _int(spec[-1], 1) if len(spec) > 1 else 1
    return 0


def declared_resources(resources: Mapping[str, Any]) -> tuple[int, int, int | None]:
    """(nodes, GPUs per node, runtime minutes) of a rule's evaluated resources."""
    nodes = max(_int(resources.get("nodes"), 1) or 1, 1)
    total_gpus = _int(resources.get("gpu"), 0) or 0  # SLURM --gpus: the whole job
    per_node = math.ceil(total_gpus / nodes) if total_gpus else _gres_gpus(resources.get("gres"))
    return nodes, per_node, _int(resources.get("runtime"), None)


def training_resources(
    method: Mapping[str, Any],
) -> tuple[int, int, int | None, int | None]:
    """(nodes, GPUs per node, runtime, retry runtime) of a method, schema defaults applied."""
    res = method.get("resources") or {}
    runtime = _int(res.get("runtime", 60), None)
    return (
        _int(res.get("nodes", 1), 1) or 1,
        _int(res.get("gpus_per_node", 0), 0) or 0,
        runtime,
        _int(res.get("retry_runtime", runtime), None),
    )


def plan_jobs(
    dag_jobs: Iterable[DagJob], config: Mapping[str, Any], cost: float | None = None
) -> Plan:
    """Turn the DAG's jobs into a plan: resources, status and totals."""
    methods = config.get("methods") or {}
    planned = []
    for job in dag_jobs:
        if job.rule in SKIPPED_RULES:
            continue
        retry = None
        method = methods.get(job.wildcards.get("method", ""))
        if job.rule in TRAINING_RULES and method is not None:
            nodes, per_node, runtime, retry = training_resources(method)
        else:
            nodes, per_node, runtime = declared_resources(job.resources)
        planned.append(
            PlannedJob(
                rule=job.rule,
                wildcards=dict(job.wildcards),
                status="run" if job.needrun else "done",
                nodes=nodes,
                gpus_per_node=per_node,
                runtime_min=runtime,
                retry_runtime_min=retry,
                reason=job.reason if job.needrun else "",
            )
        )
    if cost is None:
        cost = config.get(COST_KEY)
    return Plan(planned, None if cost is None else float(cost))


# ------------------------------------------------------------------ snakemake's view


def _default_snakefile(workdir: Path | None = None) -> Path:
    roots = (workdir or Path.cwd(), os.environ.get("FTFLOW_ROOT"), Path(__file__).parents[2])
    for root in roots:
        if root and (Path(root) / "Snakefile").exists():
            return Path(root) / "Snakefile"
    raise PlanError("no Snakefile in the working directory (run from the repository root)")


def _sort_key(job) -> tuple:
    """Run wildcards first, in run order (seeds as numbers), then any others."""
    w = job.wildcards_dict
    names = [k for k in RUN_WILDCARDS if k in w] + sorted(k for k in w if k not in RUN_WILDCARDS)
    return tuple(
        (k, (0, int(w[k]), "") if str(w[k]).isdigit() else (1, 0, str(w[k]))) for k in names
    )


def dag_jobs(
    snakefile: Path | None = None,
    workdir: Path | None = None,
    configfiles: Sequence[Path] = (),
    config: Mapping[str, Any] | None = None,
    replace_config: bool = False,
    targets: Sequence[str] = (),
) -> tuple[list[DagJob], dict]:
    """Every job of the DAG for ``targets`` (default target if none), and the final config.

    Built in-process with the Snakemake API, the way ``snakemake -n`` builds it. The
    public API has no call that returns the jobs, so this uses the two steps every
    DAG-printing command of the API runs (``Workflow._prepare_dag`` / ``_build_dag``);
    ``tests/test_plan.py`` pins that this still works with the installed Snakemake.
    ``config`` / ``configfiles`` / ``replace_config`` mean what ``--config`` /
    ``--configfile`` / ``--replace-workflow-config`` mean on the command line.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
    )

    snakefile = Path(snakefile) if snakefile else _default_snakefile(workdir)
    output = OutputSettings(quiet={Quietness.ALL}, enable_file_logging=False)
    try:
        with SnakemakeApi(output) as api:
            workflow_api = api.workflow(
                resource_settings=ResourceSettings(cores=1, nodes=1),
                config_settings=ConfigSettings(
                    config=dict(config or {}),
                    configfiles=[Path(p).absolute() for p in configfiles],
                    replace_workflow_config=replace_config,
                ),
                snakefile=snakefile.absolute(),
                workdir=Path(workdir).absolute() if workdir else None,
            )
            # Incomplete outputs (a killed or running job) count as to be rerun.
            workflow_api.dag(DAGSettings(targets=frozenset(targets), force_incomplete=True))
            workflow = workflow_api._workflow
            workflow._prepare_dag(forceall=False, ignore_incomplete=False, lock_warn_only=True)
            workflow._build_dag()
            dag = workflow.dag
            order = {rule.name: i for i, rule in enumerate(workflow.rules)}
            jobs = sorted(
                (job for job in dag.jobs if not job.is_norun),
                key=lambda job: (order.get(job.rule.name, len(order)), _sort_key(job)),
            )
            found = [
                DagJob(
                    rule=job.rule.name,
                    wildcards={k: str(v) for k, v in job.wildcards_dict.items()},
                    needrun=bool(dag.needrun(job)),
                    resources={k: v for k, v in job.resources.items() if not k.startswith("_")},
                    reason="; ".join(dag.reason(job).get_names()) if dag.needrun(job) else "",
                )
                for job in jobs
            ]
            return found, dict(workflow.config)
    except PlanError:
        raise
    except Exception as error:  # snakemake's own errors: invalid config, missing input …
        message = str(error).strip() or type(error).__name__
        raise PlanError(f"snakemake could not build the DAG: {message}") from error


# -------------------------------------------------------------------------- output


def _fmt_hours(hours: float) -> str:
    return f"{hours:,.1f}"


def _fmt_cost(value: float | None) -> str:
    return "" if value is None else f"{value:,.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], right: set[int]) -> list[str]:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(row):
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    return [line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]]


def format_plan(plan: Plan, max_jobs: int | None = MAX_JOB_LINES) -> str:
    """The plan as terminal text: the jobs (when not too many), per rule, per model, total."""
    with_cost = plan.cost_per_gpu_hour is not None
    total = plan.total()
    out = []
    headline = (
        f"ftflow plan: {total.jobs_to_run} job(s) to run, {total.jobs_done} done; "
        f"{_fmt_hours(total.gpu_hours)} GPU-hours"
    )
    if with_cost:
        headline += f", cost {_fmt_cost(plan.cost)} at {plan.cost_per_gpu_hour:g} per GPU-hour"
    out += [headline, ""]

    if max_jobs is None or len(plan.jobs) <= max_jobs:
        rows = [
            [
                j.rule,
                j.run,
                j.status,
                j.nodes,
                j.gpus_per_node,
                "-" if j.runtime_min is None else j.runtime_min,
                _fmt_hours(j.gpu_hours) if j.counted else "-",
            ]
            + ([_fmt_cost(plan.cost_of(j.gpu_hours)) if j.counted else "-"] if with_cost else [])
            for j in plan.jobs
        ]
        header = ["rule", "run", "status", "nodes", "gpus/node", "runtime[min]", "GPU-h"]
        out += _table(header + (["cost"] if with_cost else []), rows, {3, 4, 5, 6, 7}) + [""]
    else:
        out += [f"({len(plan.jobs)} jobs: one line each in the CSV, or use --all-jobs)", ""]

    def summary(title: str, totals: list[Total]) -> list[str]:
        rows = [
            [t.key, t.jobs_to_run, t.jobs_done, _fmt_hours(t.gpu_hours)]
            + ([_fmt_cost(plan.cost_of(t.gpu_hours))] if with_cost else [])
            for t in totals + [total]
        ]
        header = [title, "to run", "done", "GPU-h"] + (["cost"] if with_cost else [])
        table = _table(header, rows, {1, 2, 3, 4})
        return table[:-1] + [table[1], table[-1], ""]

    out += summary("rule", plan.by_rule())
    out += summary("model", plan.by_model())
    return "\n".join(out).rstrip() + "\n"


def csv_rows(plan: Plan) -> list[dict[str, Any]]:
    def money(hours: float) -> str:
        value = plan.cost_of(hours)
        return "" if value is None else f"{value:.4f}"

    rows = []
    for j in plan.jobs:
        rows.append(
            {
                "row": "job",
                "rule": j.rule,
                "run": j.run,
                **{k: j.wildcards.get(k, "") for k in RUN_WILDCARDS},
                "status": j.status,
                "nodes": j.nodes,
                "gpus_per_node": j.gpus_per_node,
                "gpus": j.gpus,
                "runtime_min": "" if j.runtime_min is None else j.runtime_min,
                "retry_runtime_min": "" if j.retry_runtime_min is None else j.retry_runtime_min,
                "gpu_hours": f"{j.gpu_hours:.4f}",
                "cost": money(j.gpu_hours),
                "jobs_to_run": int(j.counted),
                "jobs_done": int(not j.counted),
                "reason": j.reason,
            }
        )
    summaries = (
        [("rule", {"rule": t.key}, t) for t in plan.by_rule()]
        + [("model", {"model": "" if t.key == "-" else t.key}, t) for t in plan.by_model()]
        + [("total", {}, plan.total())]
    )
    for kind, keys, t in summaries:
        rows.append(
            {
                "row": kind,
                **keys,
                "gpu_hours": f"{t.gpu_hours:.4f}",
                "cost": money(t.gpu_hours),
                "jobs_to_run": t.jobs_to_run,
                "jobs_done": t.jobs_done,
            }
        )
    return rows


def write_csv(plan: Plan, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(plan))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- API


def main(
    out: Path | None = PLAN_CSV,
    *,
    snakefile: Path | None = None,
    workdir: Path | None = None,
    configfiles: Sequence[Path] = (),
    config: Mapping[str, Any] | None = None,
    replace_config: bool = False,
    targets: Sequence[str] = (),
    cost_per_gpu_hour: float | None = None,
    max_jobs: int | None = MAX_JOB_LINES,
    stream=None,
) -> Plan:
    """Plan, print the table to ``stream`` (stdout) and write the CSV to ``out``.

    From the ``plan`` rule, pass the running workflow's ``config`` with
    ``replace_config=True`` so the plan sees exactly the config the workflow runs with.
    """
    jobs, final_config = dag_jobs(
        snakefile=snakefile,
        workdir=workdir,
        configfiles=configfiles,
        config=config,
        replace_config=replace_config,
        targets=targets,
    )
    plan = plan_jobs(jobs, final_config, cost_per_gpu_hour)
    if out is not None:
        if workdir is not None and not Path(out).is_absolute():
            out = Path(workdir) / out
        write_csv(plan, Path(out))
    text = format_plan(plan, max_jobs)
    if out is not None:
        text += f"\nwritten to {out}\n"
    print(text, end="", file=stream or sys.stdout, flush=True)
    return plan


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftflow.plan",
        description="List every job the workflow would run with its GPUs × runtime, the "
        "GPU-hours and an optional cost, without running anything.",
    )
    parser.add_argument("targets", nargs="*", help="targets, as for snakemake (default: all)")
    parser.add_argument(
        "--configfile",
        "--configfiles",
        dest="configfiles",
        nargs="+",
        type=Path,
        default=[],
        help="config file(s), merged over config/config.yaml as snakemake --configfile does",
    )
    parser.add_argument(
        "--replace-workflow-config",
        action="store_true",
        help="the config files replace config/config.yaml instead of extending it",
    )
    parser.add_argument("--snakefile", "-s", type=Path, help="default: ./Snakefile")
    parser.add_argument("--directory", "-d", type=Path, help="working directory (default: .)")
    parser.add_argument(
        "--cost-per-gpu-hour",
        type=float,
        help=f"price of one GPU-hour (overrides the config key {COST_KEY})",
    )
    parser.add_argument("--output", "-o", type=Path, default=PLAN_CSV, help="CSV path")
    parser.add_argument("--no-csv", action="store_true", help="print only, write no CSV")
    parser.add_argument(
        "--all-jobs", action="store_true", help=f"list every job (default: up to {MAX_JOB_LINES})"
    )
    args = parser.parse_args(argv)
    try:
        main(
            None if args.no_csv else args.output,
            snakefile=args.snakefile,
            workdir=args.directory,
            configfiles=args.configfiles,
            replace_config=args.replace_workflow_config,
            targets=args.targets,
            cost_per_gpu_hour=args.cost_per_gpu_hour,
            max_jobs=None if args.all_jobs else MAX_JOB_LINES,
        )
    except PlanError as error:
        print(f"[ftflow] plan failed: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
