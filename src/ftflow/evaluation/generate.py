"""Sample the answers of a (fine-tuned) model to the evaluation questions, reproducibly.

Usage from a Snakemake ``script:`` (or ``python -m ftflow.evaluation.generate --help``)::

    from ftflow.evaluation.generate import main
    main(model_dir, final, questions_file, out, seed=0, max_new_tokens=600, batch_size=16,
         samples_override=None)

**Loading** (:func:`load_for_generation`, in :mod:`ftflow.evaluation.loading`). The base
model comes from ``model_dir``
(``resources/models/{model}``). ``final`` (a run's ``final/``) may hold a full model, which is
then loaded instead, or a PEFT adapter (``adapter_config.json``), which is applied on top of the
base with ``PeftModel.from_pretrained`` — not merged, and nothing is written to disk. The
tokenizer comes from ``final`` when it has one, else from ``model_dir``.

**Sampling** (:func:`generate_answers`; the decoding loop :func:`sample_batch` is in
:mod:`ftflow.evaluation.sampling`). Every question × paraphrase × sample
(:func:`~ftflow.evaluation.questions.build_prompts`, so the question's ``system`` prompt is the
first message) is rendered with the tokenizer's chat template plus the generation prompt and
answered by a small decoding loop of our own over the model's KV cache (not ``model.generate``,
whose result also depends on the model's ``generation_config``: top-k, repetition penalty, ...).
The distribution sampled is exactly ``softmax(logits / temperature)`` over the whole vocabulary
(top-p 1, no top-k, no penalties; ids beyond ``len(tokenizer)``, padding rows of the embedding,
are excluded), with the question's own ``temperature``; temperature 0 is greedy. An answer ends
at an end-of-sequence token (the tokenizer's EOS and every ``eos_token_id`` of the model's
generation config) or after ``max_new_tokens`` tokens. Prompts are grouped by temperature,
sorted by length within a group (less padding) and batched ``batch_size`` at a time, with left
padding and explicit position ids (so padding does not shift the positions). Within a batch,
the samples of one paraphrase share its encoded prompt (its KV cache is computed once and
copied to each sample's row), and an answer that has stopped leaves the batch rather than
decoding padding until the batch's longest answer ends.

**Reproducibility.** Randomness is per row, never per batch: the answer to (question id,
paraphrase index, sample index) draws its uniforms from its own ``torch.Generator`` seeded with
:func:`row_seed` — a hash of ``seed`` and those three values — and step ``t`` of the answer
takes the token at which the cumulative distribution first exceeds the ``t``-th uniform
(inverse-CDF sampling in float64). Consequences:

- *same seed, same batch size, same machine and software* → bit-identical answers, as far as
  the kernels are deterministic for a fixed batch shape: tested on CPU; on CUDA, cuBLAS and
  attention forward kernels normally are, but only ``torch.use_deterministic_algorithms(True)``
  (with ``CUBLAS_WORKSPACE_CONFIG=:4096:8``) makes it a promise — this has not been run on a GPU;
- *batch size, batch composition and order of the questions* do not change the random numbers
  a row uses. The logits do change in the last bits, though: padding and the batch size change
  the floating-point reduction order (on the tiny test model, up to ~3e-7 between a row alone
  and the same row padded in a batch). A row can therefore differ across batch sizes only when
  one of its uniforms falls within that rounding error of a boundary of the cumulative
  distribution (or, at temperature 0, when the top two logits tie within it). That is rare
  (the tests check that batch sizes 1, 4 and 7 give identical answers on the tiny model), but
  it is *not* a bit-exact guarantee, and after such a flip the rest of that answer differs;
- temperature 0: all samples of a paraphrase are the same answer by definition, so the
  paraphrase is decoded once and the answer copied to every sample;
- the random streams do not depend on the model, so two models evaluated with the same seed
  use the same uniforms (common random numbers, which makes their comparison less noisy).

Every answer is one output row (:data:`ROW_KEYS`), in question / paraphrase / sample order
whatever the batching. ``n_answer_tokens`` counts the generated tokens including the final
end-of-sequence token; ``finish_reason`` is ``"stop"`` (EOS reached) or ``"length"``
(``max_new_tokens`` reached — the answer is truncated). The answer text is decoded without
special tokens. Progress (answers done/total, answers and tokens per second) is written every
``progress_every`` batches and at the end, to stderr unless told otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ftflow import files
from ftflow.evaluation.loading import GenerationError, load_for_generation
from ftflow.evaluation.questions import PromptSpec, Question, build_prompts, load_questions
from ftflow.evaluation.sampling import _stop_ids, sample_batch
from ftflow.torchutil import DTYPE_NAMES

#: keys of every output row, in order.
ROW_KEYS = (
    "question_id",
    "paraphrase_index",
    "sample_index",
    "system",
    "question",
    "answer",
    "temperature",
    "n_prompt_tokens",
    "n_answer_tokens",
    "finish_reason",
)
#: a progress line every this many batches (and one at the end).
DEFAULT_PROGRESS_EVERY = 10

Progress = Callable[[str], Any] | TextIO | None


def render_prompt(tokenizer, messages: Sequence[dict[str, str]]) -> str:
    """The chat template applied to ``messages``, with the assistant generation prompt."""
    if not getattr(tokenizer, "chat_template", None):
        raise GenerationError(
            "the tokenizer has no chat template; set tokenizer.chat_template to evaluate "
            "a base model"
        )
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def encode_prompt(tokenizer, messages: Sequence[dict[str, str]]) -> list[int]:
    """Token ids of :func:`render_prompt` (the template writes its own BOS, so none is added)."""
    text = render_prompt(tokenizer, messages)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def row_seed(seed: int, question_id: str, paraphrase_index: int, sample_index: int) -> int:
    """The seed of one answer's random stream: a 63-bit hash of the run seed and the row."""
    key = f"ftflow-generate\0{seed}\0{question_id}\0{paraphrase_index}\0{sample_index}"
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


@dataclass
class _Job:
    """One sequence to decode; at temperature 0 it answers several samples at once."""

    question: Question
    spec: PromptSpec
    prompt_ids: list[int]
    samples: list[int] = field(default_factory=list)


def _jobs(tokenizer, questions: Sequence[Question], samples_override: int | None) -> list[_Job]:
    """The sequences to decode, in question / paraphrase / sample order."""
    jobs: list[_Job] = []
    for question in questions:
        encoded: dict[int, list[int]] = {}
        greedy: dict[int, _Job] = {}
        for spec in build_prompts(question, samples_override):
            p = spec.paraphrase_index
            if p not in encoded:
                encoded[p] = encode_prompt(tokenizer, spec.messages)
            if question.temperature == 0:
                if p in greedy:  # greedy: every sample is the same answer
                    greedy[p].samples.append(spec.sample_index)
                    continue
                job = greedy[p] = _Job(question, spec, encoded[p], [spec.sample_index])
            else:
                job = _Job(question, spec, encoded[p], [spec.sample_index])
            jobs.append(job)
    return jobs


def _row(job: _Job, sample_index: int, answer: str, n_answer: int, finish: str) -> dict:
    q = job.question
    return {
        "question_id": q.id,
        "paraphrase_index": job.spec.paraphrase_index,
        "sample_index": sample_index,
        "system": q.system,
        "question": q.paraphrases[job.spec.paraphrase_index],
        "answer": answer,
        "temperature": q.temperature,
        "n_prompt_tokens": len(job.prompt_ids),
        "n_answer_tokens": n_answer,
        "finish_reason": finish,
    }


def _row_order(row: dict, order: dict[str, int]) -> tuple[int, int, int]:
    return order[row["question_id"]], row["paraphrase_index"], row["sample_index"]


# -------------------------------------------------------------------------------- sampling


def generate_answers(
    model,
    tokenizer,
    questions: Sequence[Question],
    *,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    samples_override: int | None = None,
    progress: Progress = None,
    progress_every: int = DEFAULT_PROGRESS_EVERY,
) -> list[dict]:
    """One row (:data:`ROW_KEYS`) per question × paraphrase × sample; see the module docstring.

    ``samples_override`` replaces every question's ``samples_per_paraphrase``. ``progress`` is a
    callable taking a line, a text file, or ``None`` (stderr); a line is written every
    ``progress_every`` batches and at the end. Puts ``model`` in eval mode.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        raise ValueError("question ids must be unique (they seed the answers)")
    model.eval()
    say = _progress_writer(progress)

    jobs = _jobs(tokenizer, questions, samples_override)
    total = sum(len(job.samples) for job in jobs)
    groups: dict[float, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.question.temperature, []).append(job)
    batches: list[tuple[float, list[_Job]]] = []
    for temperature, group in groups.items():
        # longest first: the padding within a batch stays small, and a too-long batch fails early
        group = sorted(group, key=lambda job: -len(job.prompt_ids))
        for start in range(0, len(group), batch_size):
            batches.append((temperature, group[start : start + batch_size]))

    pad_id = tokenizer.pad_token_id
    stop_ids = _stop_ids(model, tokenizer)
    vocab = len(tokenizer)
    rows: list[dict] = []
    done = tokens = 0
    start_time = time.perf_counter()
    for number, (temperature, batch) in enumerate(batches, 1):
        seeds = [
            row_seed(seed, j.question.id, j.spec.paraphrase_index, j.spec.sample_index)
            for j in batch
        ]
        results = sample_batch(
            model,
            [job.prompt_ids for job in batch],
            temperature=temperature,
            seeds=seeds,
            max_new_tokens=max_new_tokens,
            pad_id=pad_id,
            stop_ids=stop_ids,
            vocab_size=vocab,
        )
        for job, (answer_ids, finish) in zip(batch, results, strict=True):
            text_ids = answer_ids[:-1] if finish == "stop" else answer_ids
            answer = tokenizer.decode(text_ids, skip_special_tokens=True)
            for sample_index in job.samples:
                rows.append(_row(job, sample_index, answer, len(answer_ids), finish))
            done += len(job.samples)
            tokens += len(answer_ids)
        if number % max(progress_every, 1) == 0 or number == len(batches):
            elapsed = max(time.perf_counter() - start_time, 1e-9)
            say(
                f"[ftflow] generate: {done}/{total} answers ({100 * done / total:.0f}%), "
                f"batch {number}/{len(batches)}, {done / elapsed:.2f} answers/s, "
                f"{tokens / elapsed:.1f} tokens/s"
            )
    order = {q.id: i for i, q in enumerate(questions)}
    rows.sort(key=lambda row: _row_order(row, order))
    return rows


def _progress_writer(progress: Progress) -> Callable[[str], None]:
    if progress is None:
        progress = sys.stderr
    if hasattr(progress, "write"):
        stream = progress

        def write(line: str) -> None:
            stream.write(line + "\n")
            stream.flush()

        return write
    if callable(progress):
        return progress
    raise TypeError(f"progress must be a callable, a text file or None, got {progress!r}")


# ---------------------------------------------------------------------------------- output


write_jsonl = files.write_jsonl  # kept importable from here


def main(
    model_dir: str | Path,
    final: str | Path | None,
    questions_file: str | Path,
    out: str | Path,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    samples_override: int | None = None,
    *,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str | None = None,
    progress: Progress = None,
) -> Path:
    """Load the questions and the model, sample every answer, write ``out`` (JSON lines).

    The model loads in ``dtype`` on ``device`` (default: the job's GPU when it has one).
    """
    questions = load_questions(questions_file)
    model, tokenizer = load_for_generation(
        model_dir, final, dtype, device=device, trust_remote_code=trust_remote_code
    )
    rows = generate_answers(
        model,
        tokenizer,
        questions,
        seed=seed,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        samples_override=samples_override,
        progress=progress,
    )
    return write_jsonl(rows, out)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="the base model (resources/models/<model>)")
    parser.add_argument("questions_file", type=Path)
    parser.add_argument("out", type=Path, help="the answers, JSON lines")
    parser.add_argument("--final", type=Path, help="a run's final/: full model or PEFT adapter")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--samples-override", type=int)
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="float32")
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    from ftflow import offline, paths

    offline.apply_offline(paths.RESOURCES)
    try:
        main(
            args.model_dir,
            args.final,
            args.questions_file,
            args.out,
            args.seed,
            args.max_new_tokens,
            args.batch_size,
            args.samples_override,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
        )
    except GenerationError as error:
        print(f"[ftflow] error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
