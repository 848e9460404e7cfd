"""The plan as terminal text and as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftflow import files
from ftflow.plan.disk import GB, human
from ftflow.plan.model import CSV_COLUMNS, MAX_JOB_LINES, RUN_WILDCARDS, Plan, Total


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
    if plan.disk_unknown():
        headline += f"; disk ≥ {human(plan.disk_bytes)}" if plan.disk_bytes else "; disk unknown"
    else:
        headline += f"; disk {human(plan.disk_bytes)}"
    out += [headline] + _disk_lines(plan) + [""]

    if max_jobs is None or len(plan.jobs) <= max_jobs:
        rows = [
            [
                j.rule,
                j.run,
                j.status,
                j.nodes,
                j.gpus_per_node,
                "-" if j.runtime_min is None else j.runtime_min,
                j.batch or "-",
                _fmt_hours(j.gpu_hours) if j.counted else "-",
                "-" if j.disk is None else human(j.disk_bytes),
            ]
            + ([_fmt_cost(plan.cost_of(j.gpu_hours)) if j.counted else "-"] if with_cost else [])
            for j in plan.jobs
        ]
        header = ["rule", "run", "status", "nodes", "gpus/node", "runtime[min]", "batch", "GPU-h"]
        header += ["disk"] + (["cost"] if with_cost else [])
        out += _table(header, rows, {3, 4, 5, 7, 8, 9}) + [""]
    else:
        out += [f"({len(plan.jobs)} jobs: one line each in the CSV, or use --all-jobs)", ""]

    def summary(title: str, totals: list[Total]) -> list[str]:
        rows = [
            [t.key, t.jobs_to_run, t.jobs_done, _fmt_hours(t.gpu_hours)]
            + [human(t.disk_bytes) if t.disk_bytes else "-"]
            + ([_fmt_cost(plan.cost_of(t.gpu_hours))] if with_cost else [])
            for t in totals + [total]
        ]
        header = [title, "to run", "done", "GPU-h", "disk"] + (["cost"] if with_cost else [])
        table = _table(header, rows, {1, 2, 3, 4, 5})
        return table[:-1] + [table[1], table[-1], ""]

    out += summary("rule", plan.by_rule())
    out += summary("model", plan.by_model())
    if plan.projections:
        rows = [
            [p.run, p.stage, "yes" if p.healthy else "NO", f"{p.tokens_per_second:g}",
             f"{p.hours:.2f}", _fmt_hours(p.gpu_hours)]
            for p in plan.projections
        ]  # fmt: skip
        header = ["full run", "measured in stage", "healthy", "tokens/s", "hours", "GPU-h"]
        out += ["Projected from the stages' measured seconds per step (linear scaling):"]
        out += _table(header, rows, {3, 4, 5}) + [""]
    if plan.disk_warning():  # once more after a long table, where the eye ends
        out += [plan.disk_warning()]
    return "\n".join(out).rstrip() + "\n"


def _disk_lines(plan: Plan) -> list[str]:
    """What the disk figure covers, what it cannot, and the quota's warning."""
    runs = [j for j in plan.jobs if j.disk is not None]
    if not runs:
        return []
    lines = [
        f"disk: checkpoints kept × size + final/, {len(runs)} training and sanity job(s), "
        "done ones included (ftflow.plan.disk)"
    ]
    unknown = plan.disk_unknown()
    if unknown:
        why = sorted({j.disk.unknown for j in unknown if j.disk is not None})
        lines.append(f"disk of {len(unknown)} job(s) unknown, not counted: " + "; ".join(why))
    warning = plan.disk_warning()
    if warning:
        lines.append(warning)
    elif plan.disk_quota_gb is not None:
        lines.append(f"disk within the quota of {plan.disk_quota_gb:g} GB")
    return lines


def _gb(n_bytes: int | None) -> str:
    return "" if n_bytes is None else f"{n_bytes / GB:.6f}"


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
                "batch": j.batch,
                "gpu_hours": f"{j.gpu_hours:.4f}",
                "cost": money(j.gpu_hours),
                "disk_gb": _gb(j.disk_bytes),
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
                "disk_gb": _gb(t.disk_bytes),
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
    files.write_text(path, buffer.getvalue())
    return path
