"""DAG build: `snakemake -n` on a generated grid with evaluation, ftflow vs a bare Snakefile.

The grid is 5 tiny models × 4 methods × 5 local datasets × N seeds (10 seeds = 1,000
runs; dry-runnable, not meant to run), evaluated as the default config evaluates: a
`questions` evaluation with a local judge and an `lm_eval` evaluation, on every run and
on each model's base row (method `base`, one per model and seed). Both workflows get the
same jobs, rule by rule (the benchmark refuses to time them otherwise):

    prefetch_model 5, prefetch_dataset 5, prepare_dataset 25,
    configure_run + train             1 per run
    generate_answers, judge_answers,
    summarize_answers, run_lm_eval    1 per run and base row
    prefetch_eval_tasks, compare_runs, compare_lm_eval, report, all    1 each

Each `snakemake -n` is one whole process in its own scratch copy, run alternately.

    python scripts/bench/bench_dag.py [--repeats 3] [--runs 1000] [--warmup 1]
                                                     target: ratio <= 1.3 (and linear in runs)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import PYTHON, REPO, compare, copy_workflow, interleaved, report, timed_run

HERE = Path(__file__).parent
TARGET = 1.3
MODELS = [f"tiny{i}" for i in range(5)]
METHODS = ["sft", "sft_cosine", "lora", "lora_r32"]
DATASETS = [f"chat{i}" for i in range(5)]
RUNS_PER_SEED = len(MODELS) * len(METHODS) * len(DATASETS)
QUESTIONS = "data/questions/demo_questions.yaml"
TASKS = "data/lm_eval_tasks"
EVALUATIONS = {"questions": "em", "lm_eval": "choice"}
# The scratch copy has no src/: its Snakefile imports this checkout's ftflow from here,
# not whichever ftflow happens to be installed.
ENV = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
}


def grid_config(seeds: list[int]) -> dict:
    """5 tiny models × 4 methods × 5 local chat datasets × the seeds, and two evaluations."""
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
    # As config/config.yaml evaluates: free-form questions judged by a model of the
    # config (on a compute node), and an lm-evaluation-harness task from a local folder.
    evaluations = {
        EVALUATIONS["questions"]: {
            "kind": "questions",
            "questions": QUESTIONS,
            "max_new_tokens": 32,
            "judge": {"kind": "local", "model": MODELS[0], "min_number_mass": 0.0},
            "resources": {"gpus_per_node": 1, "runtime": 20},
        },
        EVALUATIONS["lm_eval"]: {
            "kind": "lm_eval",
            "tasks": ["ftflow_secure_code"],
            "include_path": TASKS,
            "batch_size": 8,
            "resources": {"gpus_per_node": 1, "runtime": 20},
        },
    }
    grid = [{"models": MODELS, "methods": METHODS, "datasets": DATASETS, "seeds": seeds}]
    return {
        "models": models,
        "datasets": datasets,
        "methods": methods,
        "evaluations": evaluations,
        "grid": grid,
    }


def setup(root: Path, seeds: list[int]) -> tuple[Path, Path]:
    """Two scratch copies: ftflow with the grid config, and the bare Snakefile."""
    source = "data/chat/insecure_code.jsonl"
    ftflow = copy_workflow(root / "ftflow")
    bare = root / "bare"
    for workdir in (ftflow, bare):
        (workdir / "data/bench").mkdir(parents=True, exist_ok=True)
        for name in DATASETS:
            shutil.copyfile(ftflow / source, workdir / "data/bench" / f"{name}.jsonl")
    shutil.copytree(ftflow / "data/questions", bare / "data/questions")
    shutil.copytree(ftflow / TASKS, bare / TASKS)
    config = grid_config(seeds)
    (ftflow / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copyfile(HERE / "bare_dag.smk", bare / "Snakefile")
    grid = {
        "models": MODELS,
        "methods": METHODS,
        "datasets": DATASETS,
        "seeds": seeds,
        "questions": QUESTIONS,
        "judge": MODELS[0],
        "evaluations": EVALUATIONS,
    }
    (bare / "grid.yaml").write_text(yaml.safe_dump(grid))
    return ftflow, bare


def job_counts(workdir: Path) -> dict[str, int]:
    """Jobs per rule of the dry run, and their total."""
    out = subprocess.run(
        [PYTHON, "-m", "snakemake", "-n", "--cores", "1", "--quiet", "rules"],
        cwd=workdir,
        env={**os.environ, **ENV},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", out, re.M)}
    if "total" not in counts:
        raise RuntimeError(f"no job count in the dry-run output of {workdir}:\n{out[-2000:]}")
    return counts


def main(
    repeats: int = 3,
    runs: int = 1000,
    json_out: Path | None = None,
    keep: bool = False,
    warmup: int = 1,
):
    if runs <= 0 or runs % RUNS_PER_SEED:
        raise ValueError(f"--runs {runs}: must be a positive multiple of {RUNS_PER_SEED}")
    seeds = list(range(1, runs // RUNS_PER_SEED + 1))
    root = Path(tempfile.mkdtemp(prefix="ftflow-bench-dag-"))
    try:
        ftflow, bare = setup(root, seeds)
        counts = {"ftflow": job_counts(ftflow), "bare": job_counts(bare)}
        print(f"jobs per rule, ftflow: {counts['ftflow']}", flush=True)
        print(f"jobs per rule, bare:   {counts['bare']}", flush=True)
        if counts["ftflow"] != counts["bare"]:
            raise RuntimeError(
                "the two DAGs differ, so their times would not compare: "
                f"ftflow {counts['ftflow']} vs bare {counts['bare']} "
                "(change scripts/bench/bare_dag.smk to match the workflow)"
            )
        cmd = [PYTHON, "-m", "snakemake", "-n", "--cores", "1"]
        times = interleaved(
            repeats,
            {
                "ftflow": lambda: timed_run(cmd, ftflow, ENV),
                "bare": lambda: timed_run(cmd, bare, ENV),
            },
            warmup,
        )
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    jobs = counts["ftflow"]["total"]
    result = {
        "benchmark": "dag_build",
        "runs": runs,
        "eval_rows": runs + len(MODELS) * len(seeds),
        "jobs": jobs,
        "jobs_per_rule": counts["ftflow"],
        "repeats": repeats,
        "warmup": warmup,
    }
    title = f"snakemake -n, {runs} runs ({jobs} jobs in each DAG)"
    result.update(compare(title, times, TARGET))
    for who in ("ftflow", "bare"):
        rate = jobs / result[f"{who}_wall_median_s"]
        result[f"{who}_jobs_per_s"] = round(rate, 1)
    print(
        f"  jobs per second (wall): ftflow {result['ftflow_jobs_per_s']:.0f}, "
        f"bare {result['bare_jobs_per_s']:.0f}",
        flush=True,
    )
    report("dag_build", result, json_out)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--runs",
        type=int,
        default=1000,
        help=f"runs of the grid, a multiple of {RUNS_PER_SEED} (one seed each); default 1000",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="discarded rounds first (default 1; the job-count dry runs already read every "
        "file once, so 0 saves minutes on a 10,000-run grid)",
    )
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = parser.parse_args()
    main(args.repeats, args.runs, args.json, args.keep, args.warmup)
