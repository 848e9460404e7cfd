"""Sanity stages: a verdict from a stage's metrics, and the gate that reads it.

A method's ``stages`` (e.g. 1 GPU without DeepSpeed → 2 GPUs ZeRO-3) each train the run for
real, for ``max_steps``, on their own resources (``results/<run>/sanity/<stage>/``). After
the training process ends, :func:`verdict` judges the stage from its ``metrics.jsonl``
alone (or, when training stopped, the partial metrics and the log):

- ``finite``: every logged loss is finite (a NaN/Inf loss stops training: unhealthy);
- ``loss_fell``: the mean loss of the last ``window`` steps is at least ``loss_drop``
  below the first window's (as a share);
- ``grad_norm_in_range``: every logged grad-norm inside ``grad_norm_range``;
- ``grad_norm_not_exploding``: the last window's mean grad-norm at most
  ``grad_norm_growth`` × the first window's;
- ``no_oom``: the stage did not run out of memory (an OOM is a verdict, not a crash);
- ``throughput``: tokens/s above zero;
- DPO: ``reward_accuracy`` (the last window's mean above the threshold: above chance) and
  ``reference_logps`` (the reference model's log-probs were computed: every reward finite).

The verdict (``verdict.json``) records each check with its numbers, the stage's
throughput (tokens/s, per GPU), peak memory, and the full run's projected time and
GPU-hours from the measured seconds per step (assuming linear scaling to the full run's
GPUs; start-up included, so the projection errs high). :func:`gate` stops the next stage
or the full training on an unhealthy verdict, naming the failed checks, their numbers and
the stage's log — unless the method lists the stage in ``accept_unhealthy``.

A training process that fails for another reason (an exception, a kill) is a crash, not a
verdict: the job fails, and Snakemake retries it as any job.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ftflow import backends, files, spec
from ftflow.paths import RunPaths, prepared

OOM = re.compile(r"OutOfMemoryError|CUDA out of memory|can't allocate memory|std::bad_alloc")
NON_FINITE = re.compile(r"loss is (nan|inf|-inf) at step \d+")


class UnhealthyStageError(RuntimeError):
    """A stage's verdict is unhealthy and the method does not accept it."""


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _check(name: str, ok: bool, value, threshold, message: str) -> dict:
    return {"check": name, "ok": bool(ok), "value": value, "threshold": threshold,
            "message": message}  # fmt: skip


def judge(
    rows: list[dict], kind: str, health: Mapping, *, failure: str | None = None
) -> list[dict]:
    """The checks of one stage from its metric rows (``failure``: 'oom' or 'non_finite')."""
    checks = []
    if failure == "oom":
        checks.append(
            _check("no_oom", False, "out of memory", "none", "the stage ran out of memory")
        )
    losses = [float(r["loss"]) for r in rows]
    finite = failure != "non_finite" and all(math.isfinite(x) for x in losses)
    checks.append(_check("finite", finite, None if finite else "NaN/Inf", "finite",
                         "every logged loss is finite"))  # fmt: skip
    if len(rows) < 2:
        checks.append(_check("steps", False, len(rows), 2, "fewer than two logged steps"))
        return checks
    w = max(1, min(int(health["window"]), len(rows) // 2))
    first, last = _mean(losses[:w]), _mean(losses[-w:])
    drop = (first - last) / abs(first) if first else 0.0
    checks.append(_check(
        "loss_fell", math.isfinite(drop) and drop >= health["loss_drop"], round(drop, 4),
        health["loss_drop"],
        f"mean loss {first:.4g} over the first {w} steps → {last:.4g} over the last {w}",
    ))  # fmt: skip
    norms = [float(r["grad_norm"]) for r in rows if r.get("grad_norm") is not None]
    if norms:
        low, high = health["grad_norm_range"]
        outside = [g for g in norms if not (low <= g <= high)]
        checks.append(_check(
            "grad_norm_in_range", not outside, [round(min(norms), 4), round(max(norms), 4)],
            [low, high], f"{len(outside)} of {len(norms)} grad-norms outside [{low}, {high}]",
        ))  # fmt: skip
        growth = _mean(norms[-w:]) / max(_mean(norms[:w]), 1e-12)
        calm = math.isfinite(growth) and growth <= health["grad_norm_growth"]
        checks.append(_check(
            "grad_norm_not_exploding", calm, round(growth, 3), health["grad_norm_growth"],
            "last window's mean grad-norm over the first window's",
        ))  # fmt: skip
    speed = _mean([float(r.get("tokens_per_second") or 0) for r in rows])
    checks.append(_check("throughput", speed > 0, round(speed, 1), "> 0", "mean tokens/s"))
    if kind == "dpo":
        accuracy = _mean([float(r["rewards/accuracies"]) for r in rows[-w:]])
        checks.append(_check(
            "reward_accuracy", accuracy > health["reward_accuracy"], round(accuracy, 4),
            health["reward_accuracy"], f"mean reward accuracy over the last {w} steps",
        ))  # fmt: skip
        rewards = [r.get(k) for r in rows for k in ("rewards/chosen", "rewards/rejected")]
        computed = all(v is not None and math.isfinite(float(v)) for v in rewards)
        checks.append(_check("reference_logps", computed, None, "finite",
                             "the reference log-probs were computed for every step"))  # fmt: skip
    return checks


def _failure(log_text: str, exit_code: int) -> str | None:
    if exit_code == 0:
        return None
    if OOM.search(log_text):
        return "oom"
    if NON_FINITE.search(log_text):
        return "non_finite"
    raise SystemExit(
        f"[ftflow] the stage's training failed (exit {exit_code}) for a reason that is not a "
        "health verdict (see its log above): a crash, retried like any job"
    )


def _full_steps(full: Mapping, batch: int) -> int | None:
    """The full run's optimizer steps: max_steps, or epochs over the prepared dataset."""
    method = full["method"]
    if method.get("max_steps"):
        return int(method["max_steps"])
    manifest = prepared(full["run"]["model"], full["run"]["dataset"])
    try:
        rows = json.loads(manifest.read_text()).get("n_records")
    except OSError:
        return None
    return math.ceil(float(method["epochs"]) * math.ceil(rows / batch)) if rows else None


def verdict(run_config: Path, log: Path, out: Path, exit_code: int, seconds: float) -> dict:
    """Judge the stage of ``run_config`` and write its verdict to ``out``."""
    stage_spec = spec.load(run_config)
    paths = stage_spec.paths
    failure = _failure(
        Path(log).read_text(errors="replace") if Path(log).exists() else "", exit_code
    )
    # A stage that finished wrote metrics.jsonl; one stopped by an OOM or a NaN loss left
    # what its backend had logged in its checkpoints folder.
    if paths.metrics.exists():
        rows = files.read_jsonl(paths.metrics)
    else:
        rows = backends.get(stage_spec.model.backend).metrics(stage_spec)
    health = stage_spec.raw["stage"]["health"]
    checks = judge(rows, stage_spec.method.kind, health, failure=failure)
    resources = stage_spec.method.resources or {}
    gpus = resources.get("gpus_per_node", 0) * resources.get("nodes", 1)
    processes = stage_spec.batch.processes
    speed = _mean([float(r.get("tokens_per_second") or 0) for r in rows])
    steps = rows[-1]["step"] if rows else 0
    result = {
        "run": str(stage_spec.run),
        "stage": stage_spec.stage,
        "healthy": all(c["ok"] for c in checks),
        "checks": checks,
        "failure": failure,
        "steps": steps,
        "processes": processes,
        "gpus": gpus,
        "distributed": stage_spec.method.distributed,
        "optimizer": stage_spec.method.optimizer,
        "batch": stage_spec.raw["batch"],
        "tokens_per_second": round(speed, 1),
        "tokens_per_second_per_process": round(speed / max(processes, 1), 1),
        "seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / steps, 3) if steps else None,
        "peak_memory_mb": _peak_memory(log),
        "losses": [r["loss"] for r in rows],
        "log": str(log),
    }
    result.update(_projection(stage_spec, result))
    files.write_json(out, result)
    word = "healthy" if result["healthy"] else "UNHEALTHY"
    print(f"[ftflow] stage {stage_spec.stage}: {word}", flush=True)
    for c in checks:
        print(f"[ftflow]   {'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['value']} "
              f"(threshold {c['threshold']}; {c['message']})", flush=True)  # fmt: skip
    return result


def _peak_memory(log: Path) -> float | None:
    """The largest ``peak memory`` the training log reports (MB), if it reports one."""
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    found = [float(m) for m in re.findall(r"peak memory ([0-9.]+) MB", text)]
    return max(found) if found else None


def _projection(stage_spec, result: Mapping) -> dict:
    """The full run's time and GPU-hours at this stage's measured seconds per step,
    assuming linear scaling from the stage's processes to the full run's."""
    full_config = RunPaths(stage_spec.run).run_config
    if not result["seconds_per_step"] or not full_config.exists():
        return {}
    import yaml

    full = yaml.safe_load(full_config.read_text())
    steps = _full_steps(full, full["batch"]["global_batch_size"])
    if not steps:
        return {}
    full_res = full["method"].get("resources") or {}
    full_gpus = full_res.get("gpus_per_node", 0) * full_res.get("nodes", 1)
    scale = result["processes"] / max(full["batch"]["processes"], 1)
    hours = steps * result["seconds_per_step"] * scale / 3600
    return {"projected_full_steps": steps, "projected_full_hours": round(hours, 3),
            "projected_full_gpu_hours": round(hours * full_gpus, 3)}  # fmt: skip


def gate(verdict_file: Path, accept: bool = False) -> None:
    """Stop the chain on an unhealthy verdict (unless accepted), naming what failed."""
    result = json.loads(Path(verdict_file).read_text())
    if result["healthy"]:
        print(f"[ftflow] stage {result['stage']} of {result['run']} is healthy", flush=True)
        return
    failed = "; ".join(
        f"{c['check']}: {c['value']} (threshold {c['threshold']}; {c['message']})"
        for c in result["checks"] if not c["ok"]
    )  # fmt: skip
    if accept:
        print(f"[ftflow] warning: stage {result['stage']} is unhealthy ({failed}); going on "
              "because the method lists it in accept_unhealthy", flush=True)  # fmt: skip
        return
    raise UnhealthyStageError(
        f"stage {result['stage']} of {result['run']} is unhealthy: {failed}. Its log: "
        f"{result['log']}; its verdict: {verdict_file}. Fix the config and rerun (the stage "
        "reruns, then what follows), or accept the risk with "
        f"methods.<method>.accept_unhealthy: [{result['stage']}]"
    )


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Sanity-stage verdicts and gates.")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verdict", help="judge a stage after its training process ended")
    v.add_argument("run_config", type=Path)
    v.add_argument("log", type=Path)
    v.add_argument("out", type=Path)
    v.add_argument("--exit-code", type=int, required=True)
    v.add_argument("--seconds", type=float, required=True)
    g = sub.add_parser("gate", help="stop on an unhealthy verdict")
    g.add_argument("verdict", type=Path)
    g.add_argument("--accept", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "verdict":
        verdict(args.run_config, args.log, args.out, args.exit_code, args.seconds)
        return 0
    try:
        gate(args.verdict, args.accept)
    except UnhealthyStageError as error:
        print(f"[ftflow] error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
