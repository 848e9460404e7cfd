"""DAG build: `snakemake -n` on a 1,000-run grid, ftflow vs a bare Snakefile of the same shape.

The grid is 5 models × 4 methods × 5 datasets × 10 seeds = 1,000 runs (tiny models,
local datasets: dry-runnable, not meant to run). Both workflows get the same number of
jobs (prefetch ×10, prepare ×25, configure_run + train ×1,000 each, report); each
`snakemake -n` is one whole process in its own scratch copy, run alternately.

    python scripts/bench/bench_dag.py [--repeats 3]          target: ratio <= 1.3
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import PYTHON, compare, copy_workflow, interleaved, report, timed_run

HERE = Path(__file__).parent
TARGET = 1.3
MODELS = [f"tiny{i}" for i in range(5)]
METHODS = ["sft", "sft_cosine", "lora", "lora_r32"]
DATASETS = [f"chat{i}" for i in range(5)]
SEEDS = list(range(1, 11))


def grid_config() -> dict:
    """5 tiny models × 4 methods × 5 local chat datasets × 10 seeds."""
    source = "data/chat/insecure_code.jsonl"
    models = {
        name: {
            "source": {"tiny": {"corpus": ["chat0"], "hidden_size": 32 * (i + 1), "seed": i}},
            "dtype": "float32",
        }
        for i, name in enumerate(MODELS)
    }
    datasets = {
        name: {"source": {"path": f"data/bench/{name}.jsonl"}, "format": "chat", "max_length": 256}
        for name in DATASETS
    }
    base = {"learning_rate": 1.0e-3, "global_batch_size": 8, "per_device_batch_size": 4}
    res = {"gpus_per_node": 1, "runtime": 30}
    methods = {
        "sft": {"kind": "sft", **base, "resources": res},
        "sft_cosine": {"kind": "sft", **base, "lr_scheduler": "cosine", "resources": res},
        "lora": {"kind": "lora", **base, "resources": res},
        "lora_r32": {"kind": "lora", **base, "lora": {"r": 32, "alpha": 64}, "resources": res},
    }
    grid = [{"models": MODELS, "methods": METHODS, "datasets": DATASETS, "seeds": SEEDS}]
    return {"models": models, "datasets": datasets, "methods": methods, "grid": grid}, source


def setup(root: Path) -> tuple[Path, Path]:
    """Two scratch copies: ftflow with the grid config, and the bare Snakefile."""
    config, source = grid_config()
    ftflow = copy_workflow(root / "ftflow")
    bare = root / "bare"
    for workdir in (ftflow, bare):
        (workdir / "data/bench").mkdir(parents=True, exist_ok=True)
        for name in DATASETS:
            shutil.copyfile(ftflow / source, workdir / "data/bench" / f"{name}.jsonl")
    (ftflow / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copyfile(HERE / "bare_dag.smk", bare / "Snakefile")
    (bare / "grid.yaml").write_text(
        yaml.safe_dump({"models": MODELS, "methods": METHODS, "datasets": DATASETS, "seeds": SEEDS})
    )
    return ftflow, bare


def job_count(workdir: Path) -> int:
    out = subprocess.run(
        [PYTHON, "-m", "snakemake", "-n", "--cores", "1", "--quiet", "rules"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"^total\s+(\d+)", out, re.M)
    if not match:
        raise RuntimeError(f"no job count in the dry-run output of {workdir}:\n{out[-2000:]}")
    return int(match.group(1))


def main(repeats: int = 3, json_out: Path | None = None, keep: bool = False) -> dict:
    root = Path(tempfile.mkdtemp(prefix="ftflow-bench-dag-"))
    try:
        ftflow, bare = setup(root)
        jobs = {"ftflow": job_count(ftflow), "bare": job_count(bare)}
        print(f"jobs in the DAG: {jobs}", flush=True)
        cmd = [PYTHON, "-m", "snakemake", "-n", "--cores", "1"]
        times = interleaved(
            repeats,
            {"ftflow": lambda: timed_run(cmd, ftflow), "bare": lambda: timed_run(cmd, bare)},
        )
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    result = {
        "benchmark": "dag_build",
        "runs": len(MODELS) * len(METHODS) * len(DATASETS) * len(SEEDS),
        "jobs": jobs,
        "repeats": repeats,
    }
    title = f"snakemake -n, {result['runs']} runs ({jobs['ftflow']} / {jobs['bare']} jobs)"
    result.update(compare(title, times, TARGET))
    report("dag_build", result, json_out)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = parser.parse_args()
    main(args.repeats, args.json, args.keep)
