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
    resources/cache/ref_logps/{key}/           DPO reference log-probs, content-addressed
    results/{model}/{method}/{dataset}/seed{seed}/
        run.yaml  launch/  checkpoints/  final/  metrics.jsonl  sanity/{stage}/  eval/{evaluation}/
        tensorboard/  wandb/                   tracking (ftflow.tracking); a stage has its own
        published.json                         the Hub repo and commit of a published run
    results/tracking/wandb_synced.json         what sync_tracking uploaded from the login node
    logs/…, benchmarks/…                       mirror the same wildcards

A run's identity is :class:`Run`; :class:`RunPaths` gives every path of one run, and
:func:`parse_run` reads the run back from any path inside its directory (or its log).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
RUN_LAUNCH_FILE = f"{RUN_DIR}/launch/{{launch_file}}"
RUN_SANITY = f"{RUN_DIR}/sanity/{{stage}}"
SANITY_CONFIG = f"{RUN_SANITY}/run.yaml"
SANITY_VERDICT = f"{RUN_SANITY}/verdict.json"
SANITY_LAUNCH_FILE = f"{RUN_SANITY}/launch/{{launch_file}}"
RUN_EVAL = f"{RUN_DIR}/eval/{{evaluation}}"
EVAL_ANSWERS = f"{RUN_EVAL}/answers.jsonl"
EVAL_JUDGED = f"{RUN_EVAL}/judged.jsonl"
EVAL_SUMMARY = f"{RUN_EVAL}/summary.csv"
EVAL_LM_EVAL = f"{RUN_EVAL}/lm_eval.json"
RUN_PUBLISHED = f"{RUN_DIR}/published.json"  # what the publish rule pushed to the Hub

MODEL_DIR = f"{RESOURCES}/models/{{model}}"
DATASET_RAW = f"{RESOURCES}/datasets/{{dataset}}/data.jsonl"
PREPARED = f"{RESOURCES}/prepared/{{model}}/{{dataset}}.json"
CACHE_ENTRY = f"{RESOURCES}/cache/tokenized/{{key}}"
REF_LOGPS_ENTRY = f"{RESOURCES}/cache/ref_logps/{{key}}"
HF_HOME = f"{RESOURCES}/hf_home"
LM_EVAL_TASKS = f"{RESOURCES}/lm_eval/{{evaluation}}.json"
QUESTIONS_FETCHED = f"{RESOURCES}/questions/{{evaluation}}.yaml"

TRACKING_SYNCED = f"{RESULTS}/tracking/wandb_synced.json"

REPORT_DIR = f"{RESULTS}/report"
REPORT_RUNS = f"{REPORT_DIR}/runs.csv"
REPORT_LOSS = f"{REPORT_DIR}/loss/{{model}}__{{method}}__{{dataset}}.png"
REPORT_EVAL = f"{REPORT_DIR}/eval/{{evaluation}}"
REPORT_EVAL_TABLE = f"{REPORT_EVAL}/comparison.csv"
REPORT_EVAL_QUESTIONS = f"{REPORT_EVAL}/by_question.csv"
REPORT_EVAL_FIGURE = f"{REPORT_EVAL}/misaligned_by_question.png"
REPORT_LM_EVAL_TABLE = f"{REPORT_EVAL}/lm_eval.csv"
REPORT_STAGES = f"{REPORT_DIR}/stages.csv"
REPORT_STAGES_FIGURE = f"{REPORT_DIR}/stages_loss.png"


@dataclass(frozen=True, order=True)
class Run:
    """One cell of the grid: its identity is its run directory."""

    model: str
    method: str
    dataset: str
    seed: int

    @property
    def wildcards(self) -> dict[str, str]:
        return {
            "model": self.model,
            "method": self.method,
            "dataset": self.dataset,
            "seed": str(self.seed),
        }

    def __str__(self) -> str:
        return RUN.format(**self.wildcards)


_RUN_RE = re.compile(r"(?P<model>[^/]+)/(?P<method>[^/]+)/(?P<dataset>[^/]+)/seed(?P<seed>\d+)")


def parse_run(path: str | Path) -> Run:
    """The run a path belongs to: ``results/<run>/…``, ``logs/<rule>/<run>….log``.

    Raises ``ValueError`` naming the path when it lies inside no run directory.
    """
    parts = Path(path).as_posix().split("/")
    for root, offset in ((str(RESULTS), 1), (str(LOGS), 2), (str(BENCHMARKS), 2)):
        if root in parts:
            start = parts.index(root) + offset
            candidate = "/".join(parts[start : start + 4])
            candidate = re.sub(r"\.(log|tsv)$", "", candidate)
            match = _RUN_RE.fullmatch(candidate)
            if match:
                v = match.groupdict()
                return Run(v["model"], v["method"], v["dataset"], int(v["seed"]))
    raise ValueError(
        f"{path}: not inside a run directory (results/{{model}}/{{method}}/{{dataset}}/seed{{n}})"
    )


@dataclass(frozen=True)
class RunPaths:
    """Every path of one run, relative to the workflow root.

    With ``stage``, the paths of that sanity stage of the run: a short training of its own
    under ``results/<run>/sanity/<stage>/`` (run.yaml, launch/, checkpoints/, metrics.jsonl
    and the stage's ``verdict.json``).
    """

    run: Run
    stage: str | None = None

    @classmethod
    def of(cls, model: str, method: str, dataset: str, seed: int) -> RunPaths:
        return cls(Run(model, method, dataset, int(seed)))

    @property
    def root(self) -> Path:
        base = RESULTS / str(self.run)
        return base / "sanity" / self.stage if self.stage else base

    @property
    def verdict(self) -> Path:
        return self.root / "verdict.json"

    @property
    def run_config(self) -> Path:
        return self.root / "run.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard event files of this training (:mod:`ftflow.tracking`)."""
        return self.root / "tensorboard"

    @property
    def wandb(self) -> Path:
        """W&B's own folder (``offline-run-*/``): ``wandb.init(dir=root)`` writes it."""
        return self.root / "wandb"

    def launch_file(self, name: str) -> Path:
        """A file the backend renders from ``run.yaml`` for its library (``deepspeed.json``)."""
        return self.root / "launch" / name

    def sanity(self, stage: str) -> Path:
        return RESULTS / str(self.run) / "sanity" / stage

    def eval_dir(self, evaluation: str) -> Path:
        return self.root / "eval" / evaluation

    def log(self, rule: str | None = None, *extra: str) -> Path:
        """The log of ``rule`` (default: the training of this run, or of this stage)."""
        if rule is None:
            rule, extra = ("sanity", (self.stage,)) if self.stage else ("train", ())
        return Path(log(rule, str(self.run), *extra))

    def benchmark(self, rule: str = "train", *extra: str) -> Path:
        return Path(benchmark(rule, str(self.run), *extra))


def log(rule: str, *parts: str) -> str:
    """``logs/<rule>/<parts…>.log`` — the log mirrors the output's wildcards."""
    return str(Path(LOGS, rule, *parts)) + ".log"


def benchmark(rule: str, *parts: str) -> str:
    return str(Path(BENCHMARKS, rule, *parts)) + ".tsv"


def _fmt(pattern: str, **values: object) -> Path:
    return Path(pattern.format(**{k: str(v) for k, v in values.items()}))


def run_dir(model: str, method: str, dataset: str, seed: int) -> Path:
    return RunPaths.of(model, method, dataset, seed).root


def run_config(model: str, method: str, dataset: str, seed: int) -> Path:
    return RunPaths.of(model, method, dataset, seed).run_config


def final_dir(model: str, method: str, dataset: str, seed: int) -> Path:
    return RunPaths.of(model, method, dataset, seed).final


def metrics_file(model: str, method: str, dataset: str, seed: int) -> Path:
    return RunPaths.of(model, method, dataset, seed).metrics


def checkpoints_dir(model: str, method: str, dataset: str, seed: int) -> Path:
    return RunPaths.of(model, method, dataset, seed).checkpoints


def train_log(model: str, method: str, dataset: str, seed: int) -> Path:
    return RunPaths.of(model, method, dataset, seed).log("train")


def model_dir(model: str) -> Path:
    return _fmt(MODEL_DIR, model=model)


def dataset_raw(dataset: str) -> Path:
    return _fmt(DATASET_RAW, dataset=dataset)


def prepared(model: str, dataset: str) -> Path:
    return _fmt(PREPARED, model=model, dataset=dataset)


def cache_entry(key: str) -> Path:
    return _fmt(CACHE_ENTRY, key=key)


def ref_logps_entry(key: str) -> Path:
    return _fmt(REF_LOGPS_ENTRY, key=key)


def report_loss(model: str, method: str, dataset: str) -> Path:
    return _fmt(REPORT_LOSS, model=model, method=method, dataset=dataset)


def eval_file(pattern: str, model: str, method: str, dataset: str, seed: int, evaluation: str):
    return _fmt(
        pattern, model=model, method=method, dataset=dataset, seed=seed, evaluation=evaluation
    )
