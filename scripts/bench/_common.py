"""Helpers shared by the benchmark scripts: scratch copies, timing, medians, the machine."""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

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


def timed_run(cmd: Sequence[str], cwd: Path, env: dict | None = None) -> Timing:
    """Wall and CPU seconds of one whole process; raises with its output tail if it fails.

    CPU time (user + sys of the process and its children) is what a loaded, shared
    machine disturbs least; wall time is what a user waits. Both are recorded.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        list(cmd),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stderr[-4000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu)


class Timing(NamedTuple):
    wall: float
    cpu: float


def interleaved(
    repeats: int, contenders: dict[str, Callable[[], Timing]], warmup: int = 1
) -> dict[str, list[Timing]]:
    """Run the contenders alternately (A B A B …) so drift hits both; drop warm-up rounds."""
    times: dict[str, list[Timing]] = {name: [] for name in contenders}
    for i in range(warmup + repeats):
        for name, fn in contenders.items():
            t = fn()
            if i >= warmup:
                times[name].append(t)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt_times(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def compare(name: str, times: dict[str, list[Timing]], target: float) -> dict:
    """Medians of wall and CPU time for 'ftflow' and 'bare', their ratios, the verdict."""
    out: dict = {}
    for who in ("ftflow", "bare"):
        out[f"{who}_wall_s"] = [round(t.wall, 4) for t in times[who]]
        out[f"{who}_cpu_s"] = [round(t.cpu, 4) for t in times[who]]
        out[f"{who}_wall_median_s"] = median([t.wall for t in times[who]])
        out[f"{who}_cpu_median_s"] = median([t.cpu for t in times[who]])
    out["ratio_wall"] = out["ftflow_wall_median_s"] / out["bare_wall_median_s"]
    out["ratio_cpu"] = out["ftflow_cpu_median_s"] / out["bare_cpu_median_s"]
    out["target"] = f"ratio <= {target}"
    out["met_wall"] = out["ratio_wall"] <= target
    out["met_cpu"] = out["ratio_cpu"] <= target
    print(name)
    for who in ("ftflow", "bare"):
        print(
            f"  {who:<7} wall median {out[f'{who}_wall_median_s']:7.2f} s "
            f"[{fmt_times(out[f'{who}_wall_s'])}]   "
            f"cpu median {out[f'{who}_cpu_median_s']:7.2f} s [{fmt_times(out[f'{who}_cpu_s'])}]"
        )
    for kind in ("wall", "cpu"):
        verdict = "met" if out[f"met_{kind}"] else "MISSED"
        print(f"  ratio ({kind}) {out[f'ratio_{kind}']:.3f}  (target <= {target}: {verdict})")
    print(f"  load average during the run: {load_average()}", flush=True)
    return out


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


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
