"""The one reader of a run's ``final/``: what it holds and where its parts are.

``final/`` is what every backend exports (the backend contract): either a full model
(``config.json`` + weights) or a PEFT adapter (``adapter_config.json`` +
``adapter_model.safetensors``) over the run's base model, with its tokenizer beside it.
Generation, lm-eval and anything else that loads a trained model asks :func:`read`
instead of looking at the files itself.

Raises :class:`FinalModelError` naming the folder when it holds neither form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


class FinalModelError(RuntimeError):
    """A final/ (or base model) folder that holds no loadable model."""


@dataclass(frozen=True)
class FinalModel:
    """Where to load a trained (or base) model from."""

    weights: Path  # a full model: final/ itself, or the base model under an adapter
    adapter: Path | None  # the adapter folder, or None for a full model
    tokenizer: Path  # final/ when it has a tokenizer, else the base model
    base_name: str | None = None  # the base model an adapter names (a config name)

    @property
    def is_adapter(self) -> bool:
        return self.adapter is not None


def has_tokenizer(folder: Path) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def read(model_dir: str | Path, final: str | Path | None = None) -> FinalModel:
    """What to load for the base model ``model_dir`` plus the run's ``final`` (or None)."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FinalModelError(f"{model_dir}: no config.json, not a Hugging Face model directory")
    if final is None:
        return FinalModel(weights=model_dir, adapter=None, tokenizer=model_dir)
    final = Path(final)
    if not final.is_dir():
        raise FinalModelError(f"{final}: the fine-tuned model directory does not exist")
    tokenizer = final if has_tokenizer(final) else model_dir
    adapter_config = final / "adapter_config.json"
    if adapter_config.is_file():
        base = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        return FinalModel(
            weights=model_dir, adapter=final, tokenizer=tokenizer, base_name=base or None
        )
    if (final / "config.json").is_file():
        return FinalModel(weights=final, adapter=None, tokenizer=tokenizer)
    raise FinalModelError(
        f"{final}: holds neither a model (config.json) nor a PEFT adapter (adapter_config.json)"
    )
