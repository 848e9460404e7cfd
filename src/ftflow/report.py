"""Compare runs: a table of every run and loss curves per grid cell.

Reads only ``metrics.jsonl`` files, whose location encodes the run identity
(``results/{model}/{method}/{dataset}/seed{seed}/metrics.jsonl``).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pandas as pd

from ftflow import paths
from ftflow.files import read_jsonl


def identity(metrics: Path) -> dict:
    """model, method, dataset, seed from a run's metrics path (:func:`paths.parse_run`)."""
    run = paths.parse_run(metrics)
    return {"model": run.model, "method": run.method, "dataset": run.dataset, "seed": run.seed}


def read_metrics(metrics: Path) -> pd.DataFrame:
    return pd.DataFrame(read_jsonl(metrics))


def runs_table(metrics_files: list[Path]) -> pd.DataFrame:
    """One row per run: identity, steps, first/final/min loss, mean tokens per second."""
    rows = []
    for path in metrics_files:
        frame = read_metrics(path)
        row = identity(path)
        row.update(
            steps=int(frame["step"].max()),
            first_loss=float(frame["loss"].iloc[0]),
            final_loss=float(frame["loss"].iloc[-1]),
            min_loss=float(frame["loss"].min()),
            mean_grad_norm=float(frame["grad_norm"].mean()),
            tokens_per_second=float(frame["tokens_per_second"].median()),
        )
        if "rewards/accuracies" in frame:
            row["final_reward_accuracy"] = float(frame["rewards/accuracies"].iloc[-1])
            row["final_reward_margin"] = float(frame["rewards/margins"].iloc[-1])
        rows.append(row)
    columns = ["model", "method", "dataset", "seed"]
    return pd.DataFrame(rows).sort_values(columns).reset_index(drop=True)


def write_csv(table: pd.DataFrame, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".csv.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)


def loss_figures(metrics_files: list[Path], figures: list[Path]) -> None:
    """One PNG per grid cell, named ``{model}__{method}__{dataset}.png``; seeds overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_cell: dict[tuple[str, str, str], list[Path]] = defaultdict(list)
    for path in metrics_files:
        run = identity(path)
        by_cell[(run["model"], run["method"], run["dataset"])].append(path)
    for figure in figures:
        cell = tuple(Path(figure).stem.split("__"))
        fig, ax = plt.subplots(figsize=(6, 4))
        for path in sorted(by_cell.get(cell, []), key=lambda p: identity(p)["seed"]):
            frame = read_metrics(path)
            ax.plot(frame["step"], frame["loss"], label=f"seed {identity(path)['seed']}")
        ax.set(title=" / ".join(cell), xlabel="optimizer step", ylabel="training loss")
        ax.legend()
        fig.tight_layout()
        Path(figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=100)
        plt.close(fig)


def stages_table(verdicts: list[Path]) -> pd.DataFrame:
    """One row per sanity stage of each run (ftflow.health verdicts): the verdict, the
    failed checks, loss drop, grad-norm range, throughput (in all, per process, and the
    scaling efficiency against the run's previous stage), peak memory and the full run's
    projected time and GPU-hours."""
    rows = []
    previous: dict[str, dict] = {}
    for path in verdicts:
        v = json.loads(Path(path).read_text())
        checks = {c["check"]: c for c in v["checks"]}
        per_process = v["tokens_per_second_per_process"]
        before = previous.get(v["run"])
        rows.append({
            **identity(path),
            "stage": v["stage"],
            "healthy": v["healthy"],
            "failed": ", ".join(c["check"] for c in v["checks"] if not c["ok"]),
            "steps": v["steps"],
            "processes": v["processes"],
            "gpus": v["gpus"],
            "distributed": v["distributed"],
            "optimizer": v["optimizer"],
            "loss_drop": checks.get("loss_fell", {}).get("value"),
            "grad_norm_range": checks.get("grad_norm_in_range", {}).get("value"),
            "reward_accuracy": checks.get("reward_accuracy", {}).get("value"),
            "tokens_per_second": v["tokens_per_second"],
            "tokens_per_second_per_process": per_process,
            "scaling_efficiency": round(per_process / before["tokens_per_second_per_process"], 3)
            if before and before["tokens_per_second_per_process"] else None,
            "peak_memory_mb": v["peak_memory_mb"],
            "projected_full_hours": v.get("projected_full_hours"),
            "projected_full_gpu_hours": v.get("projected_full_gpu_hours"),
        })  # fmt: skip
        previous[v["run"]] = v
    return pd.DataFrame(rows)


def stages_figure(verdicts: list[Path], out: Path) -> None:
    """Each stage's loss curve, one line per run and stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for path in verdicts:
        v = json.loads(Path(path).read_text())
        mark = "" if v["healthy"] else " (unhealthy)"
        ax.plot(range(1, len(v["losses"]) + 1), v["losses"], label=f"{v['run']} {v['stage']}{mark}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("sanity stages")
    ax.legend(fontsize=6)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
