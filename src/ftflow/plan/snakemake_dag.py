"""The Snakemake DAG adapter: every job of the DAG, built in-process as ``snakemake -n`` does."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftflow.plan.model import RUN_WILDCARDS, DagJob, PlanError


@dataclass(frozen=True)
class DagRequest:
    """Which DAG to build, as ``snakemake -n`` would from these options: ``config`` /
    ``configfiles`` / ``replace_config`` mean what ``--config`` / ``--configfile`` /
    ``--replace-workflow-config`` mean on the command line; no ``targets``, the default
    target; no ``snakefile``, the one of ``workdir`` (or of the working directory)."""

    snakefile: Path | None = None
    workdir: Path | None = None
    configfiles: Sequence[Path] = ()
    config: Mapping[str, Any] | None = None
    replace_config: bool = False
    targets: Sequence[str] = ()


def _default_snakefile(workdir: Path | None = None) -> Path:
    roots = (workdir or Path.cwd(), os.environ.get("FTFLOW_ROOT"), Path(__file__).parents[3])
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


def dag_jobs(request: DagRequest | None = None) -> tuple[list[DagJob], dict]:
    """Every job of the DAG ``request`` names (default: the working directory's), and the
    final config.

    Built in-process with the Snakemake API, the way ``snakemake -n`` builds it. The
    public API has no call that returns the jobs, so this uses the two steps every
    DAG-printing command of the API runs (``Workflow._prepare_dag`` / ``_build_dag``);
    ``tests/test_plan.py`` pins that this still works with the installed Snakemake.
    """

    with built_dag(request or DagRequest()) as built:
        workflow, dag, jobs = built
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


@contextmanager
def built_dag(request: DagRequest, resource_settings=None):
    """The live Snakemake ``(workflow, dag, jobs)`` of :func:`dag_jobs`, for callers that
    need Snakemake's own job objects (the preflight hands them to the SLURM executor
    plugin). ``resource_settings`` (Snakemake's ``ResourceSettings``) replaces the plan's
    one core, e.g. by the default resources of a profile. Any error while building or
    using the DAG is a :class:`PlanError`."""
    before = os.environ.get("FTFLOW_PLANNING")
    os.environ["FTFLOW_PLANNING"] = "1"  # the config's missing files only warn
    try:
        with _build(request, resource_settings) as built:
            yield built
    finally:
        if before is None:
            os.environ.pop("FTFLOW_PLANNING", None)
        else:
            os.environ["FTFLOW_PLANNING"] = before


@contextmanager
def _build(request: DagRequest, resource_settings):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
    )

    snakefile = Path(request.snakefile or _default_snakefile(request.workdir))
    workdir = request.workdir
    output = OutputSettings(quiet={Quietness.ALL}, enable_file_logging=False)
    try:
        with SnakemakeApi(output) as api:
            workflow_api = api.workflow(
                resource_settings=resource_settings or ResourceSettings(cores=1, nodes=1),
                config_settings=ConfigSettings(
                    config=dict(request.config or {}),
                    configfiles=[Path(p).absolute() for p in request.configfiles],
                    replace_workflow_config=request.replace_config,
                ),
                snakefile=snakefile.absolute(),
                workdir=Path(workdir).absolute() if workdir else None,
            )
            # Incomplete outputs (a killed or running job) count as to be rerun.
            workflow_api.dag(DAGSettings(targets=frozenset(request.targets), force_incomplete=True))
            workflow = workflow_api._workflow
            workflow._prepare_dag(forceall=False, ignore_incomplete=False, lock_warn_only=True)
            workflow._build_dag()
            dag = workflow.dag
            order = {rule.name: i for i, rule in enumerate(workflow.rules)}
            jobs = sorted(
                (job for job in dag.jobs if not job.is_norun),
                key=lambda job: (order.get(job.rule.name, len(order)), _sort_key(job)),
            )
            yield workflow, dag, jobs
    except PlanError:
        raise
    except Exception as error:  # snakemake's own errors: invalid config, missing input …
        message = str(error).strip() or type(error).__name__
        raise PlanError(f"snakemake could not build the DAG: {message}") from error
