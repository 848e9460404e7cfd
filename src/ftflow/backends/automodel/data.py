"""The records an Automodel run trains on: ftflow's prepared, tokenised cache, as it is.

The ``dataset`` block of the rendered Automodel YAML names :func:`prepared_dataset`, so
both backends train on exactly the validated, sampled records that ``prepare_dataset``
cached — the same tokens and the same assistant-only labels (``-100`` elsewhere), with no
second chat-template pass. Automodel's loss takes labels already shifted by one (its own
``ChatDataset`` emits ``input_ids[:-1]`` and ``labels[1:]``); :func:`shifted` does that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def shifted(input_ids: list[int], labels: list[int], pad_token_id: int) -> dict[str, Any]:
    """One cached record in Automodel's layout (next-token labels, its padding hints)."""
    return {
        "input_ids": list(input_ids[:-1]),
        "labels": list(labels[1:]),
        "attention_mask": [1] * (len(input_ids) - 1),
        "___PAD_TOKEN_IDS___": {"input_ids": pad_token_id, "labels": -100, "attention_mask": 0},
    }


class PreparedDataset:
    """A map-style dataset over one prepared manifest (``resources/prepared/…json``)."""

    def __init__(self, manifest: str | Path, pad_token_id: int):
        from ftflow.prepare import load_entry

        self.manifest = Path(manifest)
        table, _info = load_entry(self.manifest)
        if "labels" not in table.column_names:
            raise ValueError(f"{self.manifest}: not a chat dataset (no labels column)")
        self.rows = table.select_columns(["input_ids", "labels"]).to_list()
        self.pad_token_id = pad_token_id

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        return shifted(row["input_ids"], row["labels"], self.pad_token_id)


def prepared_dataset(manifest: str, tokenizer=None) -> PreparedDataset:
    """What the YAML's ``dataset: {_target_: …prepared_dataset, manifest: …}`` builds.

    Automodel passes its tokenizer; only its pad token is used (EOS when it has none).
    """
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None) or 0
    return PreparedDataset(manifest, pad)
