"""What the current config and state would run, and what it would cost — without running it.

Snakemake itself decides which jobs would run: the workflow is loaded and its DAG built
in-process through the Snakemake API, exactly as ``snakemake -n`` does (same config
merging, same rerun triggers, incomplete outputs counted as to be rerun), but nothing is
executed, locked or submitted. For every job the plan lists

- the rule and the run identity (its wildcards, ``model/method/dataset/seed`` for a run),
- nodes × GPUs per node and the runtime limit in minutes,
- GPU-hours = nodes × GPUs per node × runtime / 60 (the scheduler reservation, an upper
  bound: a job that finishes early is billed less on most clusters),
- ``run`` or ``done``: a job whose outputs are up to date is listed as done and not counted,
- disk: a training job's kept checkpoints and ``final/``, a sanity stage's checkpoints, estimated
  from the model's parameters (:mod:`ftflow.plan.disk` states the formula); done jobs count,
  for they hold their disk. Past ``plan_disk_quota_gb`` (or ``--disk-quota-gb``), the plan
  prints a warning.

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
import sys
from pathlib import Path

from ftflow.plan.format import csv_rows, format_plan, write_csv
from ftflow.plan.model import (
    COST_KEY,
    CSV_COLUMNS,
    MAX_JOB_LINES,
    PLAN_CSV,
    QUOTA_KEY,
    RUN_WILDCARDS,
    SKIPPED_RULES,
    TRAINING_RULES,
    DagJob,
    Plan,
    PlanError,
    PlannedJob,
    Total,
    declared_resources,
    plan_jobs,
    training_resources,
)
from ftflow.plan.snakemake_dag import DagRequest, dag_jobs

__all__ = [
    "COST_KEY",
    "CSV_COLUMNS",
    "MAX_JOB_LINES",
    "PLAN_CSV",
    "RUN_WILDCARDS",
    "SKIPPED_RULES",
    "TRAINING_RULES",
    "DagJob",
    "Plan",
    "PlanError",
    "PlannedJob",
    "QUOTA_KEY",
    "Total",
    "cli",
    "csv_rows",
    "DagRequest",
    "dag_jobs",
    "declared_resources",
    "format_plan",
    "main",
    "plan_jobs",
    "training_resources",
    "write_csv",
]


def main(
    out: Path | None = PLAN_CSV,
    request: DagRequest | None = None,
    *,
    cost_per_gpu_hour: float | None = None,
    disk_quota_gb: float | None = None,
    max_jobs: int | None = MAX_JOB_LINES,
    stream=None,
) -> Plan:
    """Plan the DAG of ``request``, print the table to ``stream`` (stdout) and write the CSV
    to ``out`` (relative to the request's ``workdir``).

    From the ``plan`` rule, request the running workflow's ``config`` with
    ``replace_config=True`` so the plan sees exactly the config the workflow runs with.
    """
    request = request or DagRequest()
    jobs, final_config = dag_jobs(request)
    workdir = request.workdir
    plan = plan_jobs(
        jobs, final_config, cost_per_gpu_hour, root=workdir, disk_quota_gb=disk_quota_gb
    )
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
        "GPU-hours, the disk of its checkpoints and an optional cost, without running anything.",
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
    parser.add_argument(
        "--disk-quota-gb",
        type=float,
        help=f"warn when the runs' estimated disk exceeds this (overrides the config key "
        f"{QUOTA_KEY})",
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
            DagRequest(
                snakefile=args.snakefile,
                workdir=args.directory,
                configfiles=args.configfiles,
                replace_config=args.replace_workflow_config,
                targets=args.targets,
            ),
            cost_per_gpu_hour=args.cost_per_gpu_hour,
            disk_quota_gb=args.disk_quota_gb,
            max_jobs=None if args.all_jobs else MAX_JOB_LINES,
        )
    except PlanError as error:
        print(f"[ftflow] plan failed: {error}", file=sys.stderr, flush=True)
        return 1
    return 0
