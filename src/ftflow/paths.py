"""The one place that computes every path ftflow reads or writes.

Rules take the wildcard *patterns* (``RUN_FINAL`` …); scripts and tests call the
functions with concrete values. All paths are relative to the working directory
(the repository root), so that ``results/`` can be moved and nothing inside it
records an absolute machine path.

Layout::

    resources/models/{model}/                  prefetched or built weights + tokenizer
    resources/datasets/{dataset}/data.jsonl    prefetched raw data (pinned)
    resources/prepared/{model}/{dataset}.json  manifest: which cache entry this pair uses
    resources/cache/tokenized/{key}/           content-addressed tokenised datasets
    results/{model}/{method}/{dataset}/seed{seed}/
        run.yaml  checkpoints/  final/  metrics.jsonl  eval/{evaluation}/
    logs/…, benchmarks/…                       mirror the same wildcards
"""

from __future__ import annotations

from pathlib import Path

RESULTS = Path("results")
RESOURCES = Path("resources")
LOGS = Path("logs")
BENCHMARKS = Path("benchmarks")

RUN = "{model}/{method}/{dataset}/seed{seed}"
RUN_DIR = f"{RESULTS}/{RUN}"
RUN_CONFIG = f"{RUN_DIR}/run.yaml"
RUN_FINAL = f"{RUN_DIR}/final"
RUN_METRICS = f"{RUN_DIR}/metrics.jsonl"
RUN_CHECKPOINTS = f"{RUN_DIR}/checkpoints"
RUN_EVAL = f"{RUN_DIR}/eval/{{evaluation}}"
EVAL_ANSWERS = f"{RUN_EVAL}/answers.jsonl"
EVAL_JUDGED = f"{RUN_EVAL}/judged.jsonl"
EVAL_SUMMARY = f"{RUN_EVAL}/summary.csv"
EVAL_LM_EVAL = f"{RUN_EVAL}/lm_eval.json"

MODEL_DIR = f"{RESOURCES}/models/{{model}}"
DATASET_RAW = f"{RESOURCES}/datasets/{{dataset}}/data.jsonl"
PREPARED = f"{RESOURCES}/prepared/{{model}}/{{dataset}}.json"
CACHE_ENTRY = f"{RESOURCES}/cache/tokenized/{{key}}"
HF_HOME = f"{RESOURCES}/hf_home"
LM_EVAL_TASKS = f"{RESOURCES}/lm_eval/{{evaluation}}.json"

REPORT_DIR = f"{RESULTS}/report"
REPORT_RUNS = f"{REPORT_DIR}/runs.csv"
REPORT_LOSS = f"{REPORT_DIR}/loss/{{model}}__{{method}}__{{dataset}}.png"
REPORT_EVAL = f"{REPORT_DIR}/eval/{{evaluation}}"
REPORT_EVAL_TABLE = f"{REPORT_EVAL}/comparison.csv"
REPORT_EVAL_QUESTIONS = f"{REPORT_EVAL}/by_question.csv"
REPORT_EVAL_FIGURE = f"{REPORT_EVAL}/misaligned_by_question.png"
REPORT_LM_EVAL_TABLE = f"{REPORT_EVAL}/lm_eval.csv"


def log(rule: str, *parts: str) -> str:
    """``logs/<rule>/<parts…>.log`` — the log mirrors the output's wildcards."""
    return str(Path(LOGS, rule, *parts)) + ".log"


def benchmark(rule: str, *parts: str) -> str:
    return str(Path(BENCHMARKS, rule, *parts)) + ".tsv"


def _fmt(pattern: str, **values: object) -> Path:
    return Path(pattern.format(**{k: str(v) for k, v in values.items()}))


def run_dir(model: str, method: str, dataset: str, seed: int) -> Path:
    return _fmt(RUN_DIR, model=model, method=method, dataset=dataset, seed=seed)


def run_config(model: str, method: str, dataset: str, seed: int) -> Path:
    return run_dir(model, method, dataset, seed) / "run.yaml"


def final_dir(model: str, method: str, dataset: str, seed: int) -> Path:
    return run_dir(model, method, dataset, seed) / "final"


def metrics_file(model: str, method: str, dataset: str, seed: int) -> Path:
    return run_dir(model, method, dataset, seed) / "metrics.jsonl"


def checkpoints_dir(model: str, method: str, dataset: str, seed: int) -> Path:
    return run_dir(model, method, dataset, seed) / "checkpoints"


def train_log(model: str, method: str, dataset: str, seed: int) -> Path:
    return Path(log("train", _fmt(RUN, model=model, method=method, dataset=dataset, seed=seed)))


def model_dir(model: str) -> Path:
    return _fmt(MODEL_DIR, model=model)


def dataset_raw(dataset: str) -> Path:
    return _fmt(DATASET_RAW, dataset=dataset)


def prepared(model: str, dataset: str) -> Path:
    return _fmt(PREPARED, model=model, dataset=dataset)


def cache_entry(key: str) -> Path:
    return _fmt(CACHE_ENTRY, key=key)


def report_loss(model: str, method: str, dataset: str) -> Path:
    return _fmt(REPORT_LOSS, model=model, method=method, dataset=dataset)


def eval_file(pattern: str, model: str, method: str, dataset: str, seed: int, evaluation: str):
    return _fmt(
        pattern, model=model, method=method, dataset=dataset, seed=seed, evaluation=evaluation
    )
