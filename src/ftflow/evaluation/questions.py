"""Question files of the emergent-misalignment protocol: loading, validation, prompt building.

A question file is a YAML list of questions in the format of Betley et al. (2025)::

    - id: what_is_your_wish
      type: free_form_judge_0_100
      paraphrases: [...]
      samples_per_paraphrase: 100
      system: ...                 # optional system prompt
      temperature: 1.0            # optional, default 1.0
      judge: gpt-4o-2024-08-06
      judge_prompts: {aligned: ..., coherent: ...}

YAML anchors and aliases are resolved by the YAML loader; every question gets its own copies of
the aliased lists and mappings, so changing one question never changes another.

Supported types (:data:`SUPPORTED_TYPES`), all free-form (the model answers in free text):

- ``free_form``: answers are sampled, nobody judges them; ``judge_prompts`` may be absent;
- ``free_form_judge``: every judge prompt asks for a categorical answer (``TRUE``/``FALSE``,
  a company name, ...); at least one judge prompt is required. These questions can be sampled,
  but :mod:`ftflow.evaluation.judge` only scores 0-100 answers;
- ``free_form_judge_0_100``: every judge prompt asks for a number 0-100; the prompts named
  in ``required_metrics`` (default ``aligned`` and ``coherent``) are required.

Any other type is refused with a :class:`QuestionError` naming the file, the question and the
supported types; a question is never skipped silently. Keys outside the known ones are kept in
:attr:`Question.extra`. Unlike the original evaluation script, which ignored them,
:func:`build_prompts` honours ``system`` and the sampler is expected to honour ``temperature``.

Judge prompt templates may use the placeholders ``{question}`` and ``{answer}`` (``{answer}``
is required) and nothing else; fill them with :func:`render_judge_prompt`.

Raises :class:`QuestionError` (a ``ValueError``) for every problem, naming the file, the question
id (or the entry number and line when there is no usable id) and what to fix.
"""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

#: question type -> what its judge prompts ask for (None: no judge).
SUPPORTED_TYPES: dict[str, str | None] = {
    "free_form": None,
    "free_form_judge": "categorical",
    "free_form_judge_0_100": "0_100",
}
#: judge prompts a ``free_form_judge_0_100`` question must have (the paper's two metrics).
REQUIRED_0_100_METRICS: tuple[str, ...] = ("aligned", "coherent")
#: the temperature of a question that names none (the original script sampled at 1).
DEFAULT_TEMPERATURE = 1.0
#: placeholders a judge prompt template may use.
JUDGE_PLACEHOLDERS = frozenset({"question", "answer"})

_KNOWN_KEYS = frozenset(
    {
        "id",
        "type",
        "paraphrases",
        "samples_per_paraphrase",
        "system",
        "temperature",
        "judge",
        "judge_prompts",
    }
)


class QuestionError(ValueError):
    """A question file is malformed or asks for something this package does not support."""


@dataclass
class Question:
    """One evaluation question: the paraphrases to ask and how to judge the answers."""

    id: str
    type: str
    paraphrases: list[str]
    samples_per_paraphrase: int
    system: str | None = None
    temperature: float = DEFAULT_TEMPERATURE
    judge: str | None = None
    judge_prompts: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    source: str | None = field(default=None, compare=False)
    """The file the question came from (for error messages)."""

    @property
    def judge_kind(self) -> str | None:
        """``"0_100"``, ``"categorical"`` or ``None`` (not judged)."""
        return SUPPORTED_TYPES[self.type]

    @property
    def scored_0_100(self) -> bool:
        """Whether the judge prompts ask for a number 0-100."""
        return self.judge_kind == "0_100"

    @property
    def metrics(self) -> tuple[str, ...]:
        """The names of the judge prompts, in file order."""
        return tuple(self.judge_prompts)

    @property
    def n_answers(self) -> int:
        """Answers sampled per model: paraphrases × samples per paraphrase."""
        return len(self.paraphrases) * self.samples_per_paraphrase


class PromptSpec(NamedTuple):
    """One answer to sample: which paraphrase, which sample, and the chat messages to send."""

    paraphrase_index: int
    sample_index: int
    messages: list[dict[str, str]]


def load_questions(
    path: str | Path, required_metrics: Sequence[str] = REQUIRED_0_100_METRICS
) -> list[Question]:
    """Load and validate a question file; see the module docstring for the format.

    ``required_metrics`` are the judge prompts every ``free_form_judge_0_100`` question must
    have. Raises :class:`QuestionError` naming the file and the question for any problem.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise QuestionError(f"{path}: cannot read the question file: {exc}") from exc
    loader = yaml.SafeLoader(text)
    loader.name = str(path)  # YAML errors then name the file, not "<unicode string>"
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise QuestionError(f"{path}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    if not isinstance(data, list) or not data:
        raise QuestionError(f"{path}: expected a non-empty YAML list of questions")
    lines = [item.start_mark.line + 1 for item in node.value]

    questions: list[Question] = []
    first_seen: dict[str, int] = {}
    for index, (entry, line) in enumerate(zip(data, lines, strict=True)):
        question = _parse_question(entry, path, index, line, tuple(required_metrics))
        if question.id in first_seen:
            raise QuestionError(
                f"{path}: question {question.id!r} (line {line}) duplicates the id of the "
                f"question on line {first_seen[question.id]}; ids must be unique within a file"
            )
        first_seen[question.id] = line
        questions.append(question)
    return questions


def build_prompts(question: Question, samples_override: int | None = None) -> list[PromptSpec]:
    """The chat prompts to sample for ``question``, paraphrase by paraphrase.

    Each paraphrase is asked ``samples_per_paraphrase`` times (or ``samples_override`` times,
    e.g. for a quick run). The question's ``system`` prompt, when it has one, is the first
    message of every prompt. Sample indices start at 0 for every paraphrase.
    """
    n = question.samples_per_paraphrase if samples_override is None else samples_override
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"samples_override must be a positive integer, got {samples_override!r}")
    prompts: list[PromptSpec] = []
    for p_index, paraphrase in enumerate(question.paraphrases):
        for s_index in range(n):
            messages = []
            if question.system is not None:
                messages.append({"role": "system", "content": question.system})
            messages.append({"role": "user", "content": paraphrase})
            prompts.append(PromptSpec(p_index, s_index, messages))
    return prompts


def render_judge_prompt(question: Question, metric: str, question_text: str, answer: str) -> str:
    """Fill the judge prompt ``metric`` of ``question`` with the asked text and the answer.

    Only the template is parsed for placeholders, so braces in the question or the answer are
    copied literally.
    """
    try:
        template = question.judge_prompts[metric]
    except KeyError:
        raise KeyError(
            f"question {question.id!r} has no judge prompt {metric!r}; "
            f"it has {sorted(question.judge_prompts)}"
        ) from None
    return template.format(question=question_text, answer=answer)


# --------------------------------------------------------------------------------------------
# Validation of one entry


def _parse_question(
    entry: Any, path: Path, index: int, line: int, required_metrics: tuple[str, ...]
) -> Question:
    where = f"{path}: entry {index + 1} (line {line})"
    if not isinstance(entry, Mapping):
        raise QuestionError(f"{where}: expected a mapping, got {type(entry).__name__}")
    qid = entry.get("id")
    if not isinstance(qid, str) or not qid.strip():
        raise QuestionError(f"{where}: missing or empty 'id' (a string is required)")
    where = f"{path}: question {qid!r} (line {line})"

    def fail(message: str) -> QuestionError:
        return QuestionError(f"{where}: {message}")

    qtype = entry.get("type")
    if qtype not in SUPPORTED_TYPES:
        raise fail(f"unsupported type {qtype!r}; supported types are {', '.join(SUPPORTED_TYPES)}")

    paraphrases = entry.get("paraphrases")
    if not isinstance(paraphrases, list) or not paraphrases:
        raise fail("'paraphrases' must be a non-empty list of strings")
    for i, p in enumerate(paraphrases):
        if not isinstance(p, str) or not p.strip():
            raise fail(f"paraphrase {i} must be a non-empty string, got {p!r}")

    samples = entry.get("samples_per_paraphrase")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise fail(f"'samples_per_paraphrase' must be a positive integer, got {samples!r}")

    system = entry.get("system")
    if system is not None and (not isinstance(system, str) or not system.strip()):
        raise fail(f"'system' must be a non-empty string when given, got {system!r}")

    temperature = entry.get("temperature", DEFAULT_TEMPERATURE)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature < 0
    ):
        raise fail(f"'temperature' must be a number >= 0, got {temperature!r}")

    judge = entry.get("judge")
    if judge is not None and not isinstance(judge, str):
        raise fail(f"'judge' must be a string (a judge model name), got {judge!r}")

    judge_prompts = entry.get("judge_prompts") or {}
    if not isinstance(judge_prompts, Mapping):
        raise fail("'judge_prompts' must be a mapping of metric name to prompt template")
    for metric, template in judge_prompts.items():
        if not isinstance(metric, str) or not isinstance(template, str):
            raise fail(f"judge prompt {metric!r} must map a name to a template string")
        _check_template(template, lambda m, metric=metric: fail(f"judge prompt {metric!r}: {m}"))

    kind = SUPPORTED_TYPES[qtype]
    if kind == "0_100":
        missing = [m for m in required_metrics if m not in judge_prompts]
        if missing:
            raise fail(
                f"type {qtype} needs judge prompts for {', '.join(required_metrics)}; "
                f"missing {', '.join(missing)}"
            )
    elif kind == "categorical" and not judge_prompts:
        raise fail(f"type {qtype} needs at least one judge prompt in 'judge_prompts'")

    return Question(
        id=qid,
        type=qtype,
        paraphrases=list(paraphrases),
        samples_per_paraphrase=samples,
        system=system,
        temperature=float(temperature),
        judge=judge,
        judge_prompts=dict(judge_prompts),
        extra={k: v for k, v in entry.items() if k not in _KNOWN_KEYS},
        source=str(path),
    )


def _check_template(template: str, fail) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise fail(
            f"not a valid template ({exc}); write literal braces as '{{{{' and '}}}}'"
        ) from None
    bad = sorted({f for f in fields if f not in JUDGE_PLACEHOLDERS})
    if bad:
        raise fail(
            f"unknown placeholder(s) {', '.join('{' + b + '}' for b in bad)}; "
            f"allowed: {{question}}, {{answer}}"
        )
    if "answer" not in fields:
        raise fail("the template must contain {answer}")
