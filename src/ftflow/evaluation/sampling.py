"""The decoding loop of generation: one batch of prompts over the model's KV cache.

See :mod:`ftflow.evaluation.generate` for the sampling convention (inverse-CDF sampling of
``softmax(logits / temperature)`` with one seeded uniform per row and step).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Sequence

import torch

from ftflow.evaluation.loading import GenerationError
from ftflow.torchutil import model_device


@torch.inference_mode()
def sample_batch(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    temperature: float,
    seeds: Sequence[int],
    max_new_tokens: int,
    pad_id: int,
    stop_ids: Iterable[int],
    vocab_size: int | None = None,
) -> list[tuple[list[int], str]]:
    """Decode one batch: ``(generated ids, finish reason)`` per prompt.

    Row ``i`` samples with the uniforms of ``torch.Generator().manual_seed(seeds[i])``, one per
    step (inverse-CDF sampling of ``softmax(logits / temperature)``); ``temperature == 0`` is
    greedy and draws nothing. The ids end with the stop token when the reason is ``"stop"``.
    ``vocab_size`` (``len(tokenizer)``) excludes the embedding's padding ids from sampling.

    Work the answers do not need is skipped: identical prompts (the samples of one
    paraphrase) are encoded once and their KV cache copied to each row, and a row that has
    stopped leaves the batch (its cache rows are dropped) instead of decoding padding until
    the last row stops. Neither changes a row's uniforms; both change the batch shape, and
    so the logits in their last bits, as batching itself does.
    """
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt is needed")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if min(len(p) for p in prompts) == 0:
        raise ValueError("empty prompt")
    device = model_device(model)
    n = len(prompts)
    uniforms = None
    if temperature > 0:
        uniforms = torch.stack(
            [
                torch.rand(max_new_tokens, generator=_generator(s), dtype=torch.float64)
                for s in seeds
            ]
        ).to(device)
    stop = torch.tensor(sorted(set(stop_ids)), dtype=torch.long, device=device)
    extra = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}

    # Prefill: each distinct prompt once, left-padded, with explicit positions.
    distinct: dict[tuple[int, ...], int] = {}
    source = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    width = max(len(p) for p in distinct)
    mask = torch.zeros((len(distinct), width + max_new_tokens), dtype=torch.long)
    input_ids = torch.full((len(distinct), width), pad_id, dtype=torch.long)
    for i, ids in enumerate(distinct):
        input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[i, width - len(ids) :] = 1
    mask[:, width:] = 1  # the generated tokens, uncovered one step at a time
    input_ids, mask = input_ids.to(device), mask.to(device)
    position_ids = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=mask[:, :width],
        position_ids=position_ids,
        use_cache=True,
        **extra,
    )
    past, logits = out.past_key_values, out.logits[:, -1, :]
    position = position_ids[:, -1:]
    if len(distinct) < n:  # one row per prompt: copy the encoded prompts to their rows
        rows = torch.tensor(source, dtype=torch.long, device=device)
        past = _select_rows(past, rows)
        logits, mask, position = logits[rows], mask[rows], position[rows]

    active = torch.arange(n, device=device)  # the original rows still decoding
    answers: list[list[int]] = [[] for _ in range(n)]
    reasons = ["length"] * n
    for t in range(max_new_tokens):
        if vocab_size is not None and vocab_size < logits.shape[-1]:
            logits = logits.clone()
            logits[:, vocab_size:] = -math.inf
        token = _choose(logits, temperature, None if uniforms is None else uniforms[active, t])
        stopped = torch.isin(token, stop)
        for row, tok, ended in torch.stack((active, token, stopped.long()), 1).tolist():
            answers[row].append(tok)
            if ended:
                reasons[row] = "stop"
        if t + 1 == max_new_tokens:
            break
        if bool(stopped.any()):
            keep = (~stopped).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            past = _select_rows(past, keep)
            active, token, mask, position = active[keep], token[keep], mask[keep], position[keep]
        position = position + 1
        out = model(
            input_ids=token[:, None],
            attention_mask=mask[:, : width + t + 1],
            position_ids=position,
            past_key_values=past,
            use_cache=True,
            **extra,
        )
        past, logits = out.past_key_values, out.logits[:, -1, :]
    return list(zip(answers, reasons, strict=True))


def _select_rows(past, rows: torch.Tensor):
    """The KV cache of the batch rows ``rows`` (a row may repeat: one prompt, many rows)."""
    if hasattr(past, "reorder_cache"):  # transformers' caches, attention and Mamba layers
        past.reorder_cache(rows)
        return past
    if isinstance(past, tuple):  # the legacy layout of remote-code models: ((k, v), ...)
        return tuple(tuple(t.index_select(0, rows) for t in layer) for layer in past)
    raise GenerationError(f"cannot select batch rows of a {type(past).__name__} KV cache")


def _choose(logits: torch.Tensor, temperature: float, u: torch.Tensor | None) -> torch.Tensor:
    """Greedy (``u is None``) or inverse-CDF sampling with one uniform per row."""
    if u is None:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)
    target = (u * cdf[:, -1]).unsqueeze(-1)
    # the first token whose cumulative probability exceeds the target (never a 0-prob token)
    index = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return index.clamp(max=logits.shape[-1] - 1)


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _stop_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is not None:
        ids.update(int(i) for i in (eos if isinstance(eos, list | tuple) else [eos]))
    if not ids:
        raise GenerationError("neither the tokenizer nor the model names an EOS token")
    return ids


def _accepts(model, name: str) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return name in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False
