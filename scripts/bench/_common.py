"""Helpers shared by the benchmark scripts: scratch copies, timing, medians, the machine."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WORKFLOW_PARTS = ("Snakefile", "workflow", "config", "data", "envs", "profiles")


def copy_workflow(dest: Path) -> Path:
    """A runnable copy of the workflow (no results) in ``dest`` — as the tests make one."""
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part)
        elif src.exists():
            shutil.copy2(src, dest / part)
    return dest


def timed_run(cmd: Sequence[str], cwd: Path, env: dict | None = None) -> float:
    """Wall seconds of one whole process; raises with its output tail if it fails."""
    start = time.perf_counter()
    proc = subprocess.run(
        list(cmd),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stderr[-4000:]}")
    return elapsed


def interleaved(
    repeats: int, contenders: dict[str, Callable[[], float]], warmup: int = 1
) -> dict[str, list[float]]:
    """Run the contenders alternately (A B A B …) so drift hits both; drop warm-up rounds."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(warmup + repeats):
        for name, fn in contenders.items():
            t = fn()
            if i >= warmup:
                times[name].append(t)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt_times(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core"):
                info[key.strip()] = value.strip()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as handle:
            info["memory"] = f"{int(handle.readline().split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    for module in ("snakemake", "torch", "transformers", "trl", "peft"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing module is simply not reported
            pass
    return info


def report(name: str, result: dict, json_out: Path | None) -> None:
    """Print a result as JSON on the last line (run_all.py reads it) and optionally save it."""
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"RESULT {name} " + json.dumps(result), flush=True)


PYTHON = sys.executable
