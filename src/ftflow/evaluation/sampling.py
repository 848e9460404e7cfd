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
    """
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt is needed")
    if temperature < 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    device = model_device(model)
    n = len(prompts)
    width = max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError("empty prompt")
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, ids in enumerate(prompts):
        input_ids[i, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        mask[i, width - len(ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
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

    finished = torch.zeros(n, dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    past = None
    step_ids, step_pos = input_ids, position_ids
    for t in range(max_new_tokens):
        out = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=step_pos,
            past_key_values=past,
            use_cache=True,
            **extra,
        )
        past = out.past_key_values
        logits = out.logits[:, -1, :]
        if vocab_size is not None and vocab_size < logits.shape[-1]:
            logits = logits.clone()
            logits[:, vocab_size:] = -math.inf
        token = _choose(logits, temperature, None if uniforms is None else uniforms[:, t])
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        generated.append(token)
        finished |= torch.isin(token, stop)
        if bool(finished.all()):
            break
        step_ids = token[:, None]
        step_pos = step_pos[:, -1:] + 1
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=1)

    steps = torch.stack(generated, dim=1).tolist()
    stop_set = set(stop.tolist())
    results = []
    for row in steps:
        for k, tok in enumerate(row):
            if tok in stop_set:
                results.append((row[: k + 1], "stop"))
                break
        else:
            results.append((row, "length"))
    return results


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
