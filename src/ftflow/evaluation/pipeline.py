"""The evaluation steps the workflow runs after generation: judge, summarize, compare.

- :func:`judge_file` scores every answer of a run for each judge metric (aligned and
  coherent, 0–100) with a local HF judge (offline, on a compute node) or an
  OpenAI-compatible endpoint (from the login node; the key comes from the environment).
- :func:`summarize_file` computes the misaligned share per question and overall, with
  bootstrap CIs over samples (:mod:`ftflow.evaluation.summarize`).
- :func:`compare` puts every run and the base rows side by side: per grid cell the mean
  and a t-interval over seeds, plus a bar chart per question in the style of the
  paper's first figure.

Raises :class:`~ftflow.evaluation.questions.QuestionError` for a question whose judge
metrics are not 0–100 scores (e.g. the categorical deception judges), naming its id.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from ftflow import paths
from ftflow.evaluation import questions as qlib
from ftflow.evaluation import summarize as slib
from ftflow.files import read_jsonl, write_jsonl, write_text
from ftflow.torchutil import best_device, torch_dtype

METRICS = ("aligned", "coherent")
#: judge.DEFAULT_MIN_NUMBER_MASS, without importing torch (summaries run in the report env).
DEFAULT_MIN_NUMBER_MASS = 0.25


def _run_row(path: Path) -> dict:
    """model, method, dataset, seed of an eval file (the one path parser: paths.parse_run)."""
    run = paths.parse_run(path)
    return {"model": run.model, "method": run.method, "dataset": run.dataset, "seed": run.seed}


# ---------------------------------------------------------------------------- judging


def make_scorer(judge: Mapping, judge_model_dir: Path | None, judge_model: Mapping | None = None):
    """A function prompt -> (score 0–100 or None, the judge's probability mass on numbers).

    A local judge loads in its model config's ``dtype`` with its ``trust_remote_code``
    (``judge_model``: ``models.<judge.model>``), on the job's GPU when it has one.
    """
    from ftflow.evaluation.judge import expected_score

    min_mass = judge.get("min_number_mass", DEFAULT_MIN_NUMBER_MASS)
    if judge["kind"] == "api":
        from ftflow.evaluation.api_judge import ApiJudge

        api = ApiJudge(
            judge["base_url"],
            judge["model"],
            api_key_env=judge.get("api_key_env", "OPENAI_API_KEY"),
            max_retries=judge.get("max_retries", 5),
            min_number_mass=min_mass,
        )

        def api_score(prompt: str) -> tuple[float | None, float]:
            dist = api.number_distribution(prompt)
            return expected_score(dist, min_mass), float(sum(dist.values()))

        return api_score
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftflow.evaluation.judge import encode_chat_prompt, number_distribution

    settings = judge_model or {}
    trust = bool(settings.get("trust_remote_code", False))
    tokenizer = AutoTokenizer.from_pretrained(judge_model_dir, trust_remote_code=trust)
    model = AutoModelForCausalLM.from_pretrained(
        judge_model_dir,
        dtype=torch_dtype(settings.get("dtype", "float32")),
        device_map={"": str(best_device())},
        trust_remote_code=trust,
    )
    model.eval()

    batch_size = judge.get("batch_size", 64)  # candidate numbers per forward pass

    def score(prompt: str) -> tuple[float | None, float]:
        with torch.inference_mode():
            ids = encode_chat_prompt(tokenizer, prompt)
            dist = number_distribution(model, tokenizer, ids, batch_size=batch_size)
        return expected_score(dist, min_mass), float(sum(dist.values()))

    return score


def judge_rows(
    answers: list[dict],
    questions: list[qlib.Question],
    scorer,
    min_number_mass: float = DEFAULT_MIN_NUMBER_MASS,
) -> list[dict]:
    """Each answer with its ``aligned`` / ``coherent`` scores, the judge's probability mass on
    numbers for each (``<metric>_number_mass``) and the threshold below which a score is None."""
    by_id = {q.id: q for q in questions}
    out = []
    for i, row in enumerate(answers):
        question = by_id[row["question_id"]]
        judged = dict(row)
        if question.scored_0_100:
            for metric in METRICS:
                prompt = qlib.render_judge_prompt(question, metric, row["question"], row["answer"])
                judged[metric], judged[f"{metric}_number_mass"] = scorer(prompt)
            judged["min_number_mass"] = min_number_mass
        elif question.judge_kind is not None:
            raise qlib.QuestionError(
                f"{question.source}: question {question.id!r} has judge metrics "
                f"{', '.join(question.metrics)}; ftflow scores 0–100 metrics "
                f"({', '.join(METRICS)}) only"
            )
        else:
            judged.update({m: None for m in METRICS})
        out.append(judged)
        if (i + 1) % 20 == 0 or i + 1 == len(answers):
            print(f"judged {i + 1}/{len(answers)} answers", file=sys.stderr, flush=True)
    return out


def judge_file(
    answers: Path,
    questions: Path,
    judge: Mapping,
    judge_model_dir: Path | None,
    out: Path,
    judge_model: Mapping | None = None,
) -> None:
    scorer = make_scorer(judge, judge_model_dir, judge_model)
    min_mass = judge.get("min_number_mass", DEFAULT_MIN_NUMBER_MASS)
    rows = judge_rows(read_jsonl(answers), qlib.load_questions(questions), scorer, min_mass)
    write_jsonl(rows, out)


# -------------------------------------------------------------------------- summaries


def summarize_file(
    judged: Path, out: Path, *, aligned_below: float, coherent_above: float, seed: int = 0
) -> pd.DataFrame:
    """The per-question summary of a judged file, plus how much the judge scored at all:
    ``share_unscored``, ``mean_number_mass`` (the judge's mean probability on numbers),
    ``min_number_mass`` (the threshold) and a ``warning`` when most answers are unscored or
    no scored answer is coherent (the misaligned share is then 0/0: written as NaN)."""
    rows = read_jsonl(judged)
    table = slib.summarize(
        rows, aligned_below=aligned_below, coherent_above=coherent_above, seed=seed
    )
    masses = [
        row[f"{m}_number_mass"]
        for row in rows
        for m in METRICS
        if row.get(f"{m}_number_mass") is not None
    ]
    thresholds = {row["min_number_mass"] for row in rows if "min_number_mass" in row}
    table["share_unscored"] = table["n_unscored"] / table["n_answers"].clip(lower=1)
    table["mean_number_mass"] = sum(masses) / len(masses) if masses else float("nan")
    table["min_number_mass"] = thresholds.pop() if len(thresholds) == 1 else float("nan")
    table["warning"] = [_warning(row, coherent_above) for row in table.to_dict("records")]
    for row in table.to_dict("records"):
        if row["warning"]:
            print(
                f"[ftflow] warning: {judged}: {row['question_id']}: {row['warning']}",
                file=sys.stderr,
                flush=True,
            )
    write_text(out, table.to_csv(index=False, na_rep="NaN"))
    return table


def _warning(row: Mapping, coherent_above: float) -> str:
    """Why a summary row's share says little: a judge that scored (almost) nothing, or 0/0."""
    notes = []
    if row["n_answers"] and row["share_unscored"] > 0.5:
        notes.append(
            f"{row['n_unscored']}/{row['n_answers']} answers unscored (judge's mean mass on "
            f"numbers {row['mean_number_mass']:.3f}, threshold {row['min_number_mass']})"
        )
    if row["n_scored"] and not row["n_coherent"]:
        notes.append(f"no scored answer is coherent (coherent > {coherent_above}): share 0/0")
    return "; ".join(notes)


identity = _run_row


def compare(summaries: list[Path], table_out: Path, questions_out: Path, figure: Path) -> None:
    """Per grid cell (base rows included): mean misaligned share and CI over seeds."""
    frames = []
    for path in summaries:
        frame = pd.read_csv(path)
        for key, value in identity(path).items():
            frame[key] = value
        frames.append(frame)
    every = pd.concat(frames, ignore_index=True)
    cells = ["model", "method", "dataset"]
    rows = []
    for (*cell, qid), group in every.groupby([*cells, "question_id"], sort=True):
        rates = group.dropna(subset=["misaligned_share"])
        warnings = group["warning"].dropna() if "warning" in group else pd.Series([], dtype=str)
        warning = "; ".join(dict.fromkeys(w for w in warnings if w))
        if not len(rates):
            warning = "; ".join(filter(None, [warning, "no seed has a misaligned share (NaN)"]))
        agg = slib.aggregate_seeds(list(rates["misaligned_share"])) if len(rates) else None
        rows.append(
            dict(zip(cells, cell, strict=True))
            | {
                "question_id": qid,
                "n_seeds": len(group),
                "n_answers": int(group["n_answers"].sum()),
                "n_unscored": int(group["n_unscored"].sum()),
                "misaligned_share": agg.mean if agg else float("nan"),
                "ci_low": agg.ci_low if agg else float("nan"),
                "ci_high": agg.ci_high if agg else float("nan"),
                "warning": warning,
            }
        )
    by_question = pd.DataFrame(rows)
    overall = by_question[by_question["question_id"] == slib.OVERALL].drop(columns="question_id")
    for frame, out in ((overall, table_out), (by_question, questions_out)):
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False, na_rep="NaN")
    _bar_chart(by_question, figure)


def _bar_chart(by_question: pd.DataFrame, figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = by_question[by_question["question_id"] != slib.OVERALL]
    questions = list(dict.fromkeys(data["question_id"]))
    labels = list(dict.fromkeys(data["model"] + "/" + data["method"] + "/" + data["dataset"]))
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(questions) * max(1, len(labels) / 3)), 4))
    for i, label in enumerate(labels):
        sub = data[(data["model"] + "/" + data["method"] + "/" + data["dataset"]) == label]
        sub = sub.set_index("question_id").reindex(questions)
        x = np.arange(len(questions)) + (i - (len(labels) - 1) / 2) * width
        y = sub["misaligned_share"].to_numpy(dtype=float)
        err = np.vstack(
            [y - sub["ci_low"].to_numpy(dtype=float), sub["ci_high"].to_numpy(dtype=float) - y]
        )
        ax.bar(x, np.nan_to_num(y), width, label=label)
        ax.errorbar(x, y, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=2)
    ax.set_xticks(np.arange(len(questions)), questions, rotation=30, ha="right")
    ax.set(ylabel="share of misaligned answers", ylim=(0, 1))
    ax.legend(fontsize="small")
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=100)
    plt.close(fig)


def compare_lm_eval(results: list[Path], out: Path) -> pd.DataFrame:
    """One row per run and task; one column per metric (e.g. acc, acc_stderr)."""
    rows = []
    for path in results:
        data = json.loads(Path(path).read_text())
        for task, info in data["results"].items():
            row = identity(path) | {"task": task, "n_samples": info.get("n_samples")}
            row.update({k: v for k, v in info["metrics"].items() if not isinstance(v, dict)})
            rows.append(row)
    table = pd.DataFrame(rows).sort_values(["task", "model", "method", "dataset", "seed"])
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return table
