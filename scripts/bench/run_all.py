"""Run every ftflow benchmark, each against its baseline, and print one summary.

    python scripts/bench/run_all.py                  # all of them, default repeats
    python scripts/bench/run_all.py --quick          # one repeat each (a smoke run)
    python scripts/bench/run_all.py --only dag train --json bench.json

Each benchmark is its own script (bench_dag.py, bench_train.py, bench_prepare.py,
bench_generate.py) and runs in its own process; this collects their results (the
``RESULT`` line each prints).
Benchmarks run in scratch directories under $TMPDIR, never in the repository, and
write nothing to benchmarks/ (Snakemake's benchmark output folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine

HERE = Path(__file__).parent
BENCHMARKS = {
    "dag": ("bench_dag.py", ["--repeats", "5"]),
    "train": ("bench_train.py", ["--repeats", "5"]),
    "prepare": ("bench_prepare.py", ["--repeats", "7"]),
    "prepare16": ("bench_prepare.py", ["--repeats", "5", "--scale", "16"]),
    "generate": ("bench_generate.py", ["--repeats", "9"]),
    "judge": ("bench_judge.py", ["--repeats", "5"]),
}


def run(name: str, quick: bool) -> dict:
    script, args = BENCHMARKS[name]
    if quick:
        args = [
            "1" if prev == "--repeats" else a
            for prev, a in zip([""] + args[:-1], args, strict=True)
        ]
    print(f"\n=== {name}: {script} {' '.join(args)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(HERE / script), *args], capture_output=True, text=True
    )
    lines = proc.stdout.splitlines()
    print("\n".join(line for line in lines if not line.startswith("RESULT ")), flush=True)
    if proc.returncode != 0:
        print(proc.stderr[-4000:], file=sys.stderr)
        return {"benchmark": name, "error": proc.stderr.strip().splitlines()[-1:]}
    result = json.loads(next(line for line in lines if line.startswith("RESULT ")).split(" ", 2)[2])
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def summary_line(name: str, r: dict) -> str:
    if "error" in r:
        return f"{name:<10} ERROR {r['error']}"
    if "batched_answers_per_s" in r:
        same = (
            "identical answers"
            if r["identical_answers"]
            else f"{r['n_differing_answers']}/{r['answers']} answers differ"
        )
        return (
            f"{name:<10} batch {r['batch_size']} {r['batched_answers_per_s']:.1f} answers/s / "
            f"batch 1 {r['unbatched_answers_per_s']:.1f} answers/s = "
            f"{r['speedup_wall']:.2f}x wall, {r['speedup_cpu']:.2f}x cpu, {same} "
            f"({r['answers']} answers, target: {r['target']})"
        )
    if "together_prompts_per_s" in r:
        return (
            f"{name:<10} batch {r['batch_size']} {r['together_prompts_per_s']:.1f} prompts/s / "
            f"batch 1 {r['alone_prompts_per_s']:.1f} prompts/s = {r['speedup_wall']:.2f}x wall, "
            f"largest score difference {r['max_score_difference']:.1e} "
            f"({r['prompts']} judge prompts, target: {r['target']})"
        )
    if "speedup_wall" in r:
        return (
            f"{name:<10} cold {r['cold_wall_median_s'] * 1e3:.1f} ms / warm "
            f"{r['warm_wall_median_s'] * 1e3:.2f} ms = {r['speedup_wall']:.0f}x wall, "
            f"{r['speedup_cpu']:.0f}x cpu ({r['target']}: {'met' if r['met'] else 'MISSED'})"
        )
    return (
        f"{name:<10} ftflow {r['ftflow_wall_median_s']:.2f} s / bare "
        f"{r['bare_wall_median_s']:.2f} s = {r['ratio_wall']:.3f} wall, "
        f"{r['ratio_cpu']:.3f} cpu ({r['target']}: wall "
        f"{'met' if r['met_wall'] else 'MISSED'}, cpu {'met' if r['met_cpu'] else 'MISSED'})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="a subset")
    parser.add_argument("--quick", action="store_true", help="one repeat each")
    parser.add_argument("--json", type=Path, help="write every result and the machine here")
    args = parser.parse_args(argv)

    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    results = {name: run(name, args.quick) for name in (args.only or BENCHMARKS)}
    print("\n=== summary (medians)")
    for name, result in results.items():
        print(summary_line(name, result))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")
        print(f"written to {args.json}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
