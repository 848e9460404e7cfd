"""Run lm-evaluation-harness on a run's final model, offline, and write one JSON results file.

Tested with ``lm-eval==0.4.13`` (torch 2.13, transformers 5, datasets 5, peft 0.21); install
with ``pip install "lm-eval==0.4.13"``. lm-eval is imported only inside the functions, so
importing this module is cheap and works without it.

Which model is evaluated (:func:`model_args`):

* ``final=None`` -- the base model in ``model_dir``;
* ``final`` holds a full model (``config.json``) -- that model;
* ``final`` holds a PEFT adapter (``adapter_config.json``) -- ``model_dir`` plus the adapter,
  through lm-eval's ``peft=`` argument. ftflow writes the adapter's
  ``base_model_name_or_path`` as the model's *name*, which is not a path, so the base directory
  is always given explicitly; the tokenizer is the one saved next to the adapter if there is
  one, else the base model's.

Offline: compute nodes have no internet. Call :func:`ftflow.offline.apply_offline` before
anything imports ``huggingface_hub`` / ``transformers`` / ``datasets`` (the command line does,
with ``--resources``); :func:`run_lm_eval` refuses to start when the Hugging Face libraries are
not in offline mode (``require_offline=False`` to allow it on a login node). In offline mode

* models are read from local directories only;
* a task's data comes from ``HF_DATASETS_CACHE`` (hub datasets, put there on the login node
  by :func:`prefetch_tasks`) or from local files (``dataset_path: json`` with
  ``dataset_kwargs: {data_files: ...}``, like the project's own tasks in ``data/lm_eval_tasks``);
* lm-eval's only network call, a best-effort model-sha lookup for its metadata, fails at once
  and is ignored.

Relative ``data_files`` (and ``data_dir``) in a task YAML are taken relative to that YAML's
directory: lm-eval passes them to ``datasets.load_dataset`` unchanged, and ``datasets``
resolves them against the *current working directory*, so a task would only load when run from
its own folder. The runner rewrites them to absolute paths while it builds the tasks (the YAML
files are not changed). URLs and ``hf://`` paths are left alone.

Command line (what a Snakemake rule runs)::

    # login node, online: put the tasks' hub datasets into resources/hf_home/datasets
    python -m ftflow.evaluation.lm_eval_runner --prefetch --resources resources \
        --tasks hellaswag,ftflow_secure_code --include-path data/lm_eval_tasks
    # compute node, offline
    python -m ftflow.evaluation.lm_eval_runner --resources resources \
        --model-dir resources/models/tiny --final results/.../final \
        --tasks ftflow_secure_code --include-path data/lm_eval_tasks --out results/.../eval/x.json

The results file (written atomically) holds, per task, lm-eval's metrics (``acc``,
``acc_stderr``, ...; filter ``none`` dropped from the key, other filters kept as
``metric,filter``), the number of samples evaluated and in the task, the few-shot count and the
task version; plus the lm-eval version, the tasks asked for, the settings and the model (paths
relative to the working directory, never absolute).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ftflow import final as finallib
from ftflow.evaluation.lm_eval_tasks import _task_manager, prefetch_tasks, resolve_data_paths
from ftflow.files import write_text

__all__ = [
    "TASKS_DIR",
    "adapter_config",
    "model_args",
    "prefetch_tasks",
    "resolve_data_paths",
    "run_lm_eval",
]

logger = logging.getLogger(__name__)

TASKS_DIR = Path("data/lm_eval_tasks")
"""The project's own lm-eval tasks (relative to the repository root)."""

DEFAULT_BOOTSTRAP_ITERS = 1000
"""For the stderr of metrics without a closed form (lm-eval's default of 100000 is slow on a CPU);
``acc``/``acc_norm`` stderrs are closed-form and do not use it."""


# --------------------------------------------------------------------------- model


def adapter_config(final: Path | None) -> dict | None:
    """The PEFT ``adapter_config.json`` in ``final``, or ``None`` if it is not an adapter."""
    if final is None:
        return None
    path = Path(final) / "adapter_config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def model_args(
    model_dir: Path,
    final: Path | None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, str]:
    """lm-eval ``hf`` model arguments (absolute paths) for the base model plus ``final``.

    What to load comes from :func:`ftflow.final.read` (the one reader of final/); ``dtype``
    and ``trust_remote_code`` are the model's config (``models.<name>``), passed when set.
    """
    found = finallib.read(
        os.path.abspath(model_dir), None if final is None else os.path.abspath(final)
    )
    if found.is_adapter:
        args = {
            "pretrained": str(found.weights),
            "peft": str(found.adapter),
            "tokenizer": str(found.tokenizer),
        }
    else:
        args = {"pretrained": str(found.weights)}
    if dtype is not None:
        args["dtype"] = dtype
    if trust_remote_code:
        args["trust_remote_code"] = True
    return args


def _portable(path: Path | str | None) -> str | None:
    """``path`` relative to the working directory; only its name if it lies outside."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    try:
        return Path(os.path.abspath(path)).relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return path.name


# --------------------------------------------------------------------------- run


def _check_offline() -> None:
    import datasets.config
    import huggingface_hub.constants

    missing = [
        name
        for name, on in (
            ("HF_HUB_OFFLINE", huggingface_hub.constants.HF_HUB_OFFLINE),
            ("HF_DATASETS_OFFLINE", datasets.config.HF_DATASETS_OFFLINE),
        )
        if not on
    ]
    if missing:
        raise RuntimeError(
            f"{', '.join(missing)} not in effect: call ftflow.offline.apply_offline(resources) "
            "before importing huggingface_hub / transformers / datasets (or run "
            "`python -m ftflow.evaluation.lm_eval_runner --resources resources ...`), or pass "
            "require_offline=False"
        )


def _number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value == "N/A":
        return None
    return value


def _metrics(raw: Mapping[str, Any]) -> dict[str, Any]:
    """lm-eval's ``{"acc,none": .., "acc_stderr,none": .., "alias": ..}`` as ``{"acc": ..}``."""
    metrics: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "alias" or "," not in key:
            continue
        metric, _, filt = key.partition(",")
        metrics[metric if filt == "none" else key] = _number(value)
    return metrics


def _summary(raw: dict, tasks: Sequence[str], settings: dict, model: dict) -> dict:
    results = raw.get("results", {})
    n_samples = raw.get("n-samples", {})
    per_task = {}
    for name in sorted(results):
        if name in raw.get("groups", {}):
            continue
        counts = n_samples.get(name, {})
        per_task[name] = {
            "metrics": _metrics(results[name]),
            "n_samples": counts.get("effective"),
            "n_samples_total": counts.get("original"),
            "num_fewshot": raw.get("n-shot", {}).get(name),
            "version": raw.get("versions", {}).get(name),
            "higher_is_better": raw.get("higher_is_better", {}).get(name, {}),
        }
    groups = {
        name: {
            "metrics": _metrics(values),
            "tasks": sorted(raw.get("group_subtasks", {}).get(name, [])),
        }
        for name, values in sorted(raw.get("groups", {}).items())
    }
    config = raw.get("config", {})
    model = {
        **model,
        "num_parameters": config.get("model_num_parameters"),
        "dtype": str(config["model_dtype"]) if config.get("model_dtype") else None,
    }
    return {
        "kind": "lm_eval",
        "lm_eval_version": _lm_eval_version(),
        "tasks": list(tasks),
        "settings": settings,
        "model": model,
        "results": per_task,
        "groups": groups,
    }


def _lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def _write_atomic(out: Path, data: dict) -> None:
    write_text(out, json.dumps(data, indent=2, allow_nan=False) + "\n")


def run_lm_eval(
    model_dir: Path,
    final: Path | None,
    tasks: list[str],
    include_path: Path | None,
    out: Path,
    *,
    batch_size: int = 8,
    limit: int | float | None = None,
    seed: int = 0,
    num_fewshot: int | None = None,
    bootstrap_iters: int = DEFAULT_BOOTSTRAP_ITERS,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    require_offline: bool = True,
) -> dict:
    """Evaluate ``model_dir`` (+ ``final``) on lm-eval ``tasks``; write and return the summary.

    ``include_path`` is a folder of extra task YAMLs (e.g. :data:`TASKS_DIR`); ``limit`` caps
    the samples per task (an int, or a fraction < 1); ``seed`` seeds python, numpy, torch and
    the few-shot sampler; ``num_fewshot=None`` keeps each task's own setting (0 if it has none);
    ``device`` defaults to ``cuda`` when available, else ``cpu``.
    """
    if not tasks:
        raise ValueError("no lm-eval tasks given")
    model_dir = Path(model_dir)
    final = None if final is None else Path(final)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if final is not None and not final.is_dir():
        raise FileNotFoundError(f"final model directory {final} does not exist")
    if require_offline:
        _check_offline()

    import lm_eval
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    args = model_args(model_dir, final, dtype, trust_remote_code)
    manager = _task_manager(tasks, include_path)
    start = time.monotonic()
    raw = lm_eval.simple_evaluate(
        model="hf",
        model_args=args,
        tasks=list(tasks),
        num_fewshot=num_fewshot,
        batch_size=batch_size,
        device=device,
        limit=limit,
        bootstrap_iters=bootstrap_iters,
        log_samples=False,
        task_manager=manager,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    elapsed = time.monotonic() - start
    if raw is None:  # not rank 0 of a distributed run
        return {}
    settings = {
        "batch_size": batch_size,
        "limit": limit,
        "seed": seed,
        "num_fewshot": num_fewshot,
        "bootstrap_iters": bootstrap_iters,
        "device": device,
        "include_path": _portable(include_path),
    }
    model = {
        "base": _portable(model_dir),
        "final": _portable(final),
        "adapter": "peft" in args,
    }
    summary = _summary(raw, tasks, settings, model)
    summary["elapsed_s"] = round(elapsed, 3)
    _write_atomic(out, summary)
    return summary


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftflow.evaluation.lm_eval_runner", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    parser.add_argument("--include-path", type=Path, help="folder of extra task YAMLs")
    parser.add_argument(
        "--resources",
        type=Path,
        help="Hugging Face caches in this folder; offline unless --prefetch",
    )
    parser.add_argument(
        "--prefetch",
        action="store_true",
        help="login node: only load the tasks once (online) to fill the datasets cache",
    )
    parser.add_argument("--model-dir", type=Path, help="base model directory")
    parser.add_argument("--final", type=Path, help="the run's final/ (full model or adapter)")
    parser.add_argument("--out", type=Path, help="results JSON to write")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-fewshot", type=int)
    parser.add_argument("--device")
    args = parser.parse_args(argv)
    tasks = [task for task in args.tasks.split(",") if task]

    if args.resources is not None:
        from ftflow.offline import OFFLINE_ENV, apply_offline, offline_env

        if args.prefetch:
            env = offline_env(args.resources)
            os.environ.update({k: v for k, v in env.items() if k not in OFFLINE_ENV})
        else:
            apply_offline(args.resources)
    if "HF_HOME" in os.environ:
        # lm-eval's request cache (only used with cache_requests, which the runner never sets)
        # would otherwise default to a folder inside its installed package.
        os.environ.setdefault("LM_HARNESS_CACHE_PATH", str(Path(os.environ["HF_HOME"]) / "lm_eval"))

    if args.prefetch:
        for name in prefetch_tasks(tasks, args.include_path):
            print(f"[ftflow] lm-eval task {name} prefetched", flush=True)
        return 0
    if args.model_dir is None or args.out is None:
        parser.error("--model-dir and --out are required (unless --prefetch)")
    limit = args.limit
    if limit is not None and limit >= 1 and limit == int(limit):
        limit = int(limit)
    summary = run_lm_eval(
        args.model_dir,
        args.final,
        tasks,
        args.include_path,
        args.out,
        batch_size=args.batch_size,
        limit=limit,
        seed=args.seed,
        num_fewshot=args.num_fewshot,
        device=args.device,
    )
    for name, task in summary.get("results", {}).items():
        print(f"[ftflow] lm-eval {name}: {json.dumps(task['metrics'])}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
