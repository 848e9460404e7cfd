"""Load a base model, or a run's final/ (full model or PEFT adapter), for generation.

What to load comes from :func:`ftflow.final.read`; the model loads in the model config's
``dtype`` (``models.<name>.dtype``) with its ``trust_remote_code``, on the job's accelerator
when it has one (:func:`ftflow.torchutil.best_device`). Raises :class:`GenerationError`
naming the folder that cannot be used.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ftflow import final as finallib
from ftflow.torchutil import best_device, torch_dtype


class GenerationError(RuntimeError):
    """The model or adapter cannot be used for generation."""


def load_for_generation(
    model_dir: str | Path,
    final: str | Path | None = None,
    dtype: str | torch.dtype = "float32",
    *,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
):
    """``(model, tokenizer)`` ready for :func:`generate_answers`; the model is in eval mode.

    - ``final`` is ``None``: the base model in ``model_dir``;
    - ``final`` holds a full model (``config.json``): that model;
    - ``final`` holds a PEFT adapter (``adapter_config.json``): the base from ``model_dir`` with
      the adapter applied by ``PeftModel.from_pretrained`` (not merged; nothing is written).
      The adapter's ``base_model_name_or_path`` is the run's model *name*; a warning is given
      when it is not the name of ``model_dir``.

    The tokenizer comes from ``final`` when it holds one, else from ``model_dir``; its padding
    side is set to left and, if it has no pad token, the EOS token pads. ``device`` defaults to
    ``cuda`` when available, else ``cpu``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        found = finallib.read(model_dir, final)
    except finallib.FinalModelError as error:
        raise GenerationError(str(error)) from None
    device = device or best_device()
    model = AutoModelForCausalLM.from_pretrained(
        found.weights,
        dtype=torch_dtype(dtype),
        device_map={"": str(device)},
        trust_remote_code=trust_remote_code,
    )
    if found.is_adapter:
        from peft import PeftModel

        if found.base_name and Path(str(found.base_name)).name != Path(model_dir).name:
            warnings.warn(
                f"{final}: the adapter was trained on {found.base_name!r}, but the base model "
                f"is loaded from {model_dir}",
                RuntimeWarning,
                stacklevel=2,
            )
        model = PeftModel.from_pretrained(model, found.adapter, is_trainable=False)
    model.eval()

    tokenizer = AutoTokenizer.from_pretrained(found.tokenizer, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise GenerationError(
                f"{found.tokenizer}: the tokenizer has neither a pad nor an EOS token"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
