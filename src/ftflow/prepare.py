"""Turn a raw JSONL dataset into a tokenised cache that cannot go stale.

``prepare`` validates every record (errors name file and line, see
:mod:`ftflow.records`), draws the configured fraction with its seed, applies the
model's chat template, tokenises, and stores the result under a key that hashes
the raw data's *content* together with every setting that changes tokens:
tokenizer files, chat template, max length, fraction, sampling seed and format.
Editing the raw file or any of those settings gives a new key, hence a rebuild;
preparing again with nothing changed finds the entry and does no work.

Entries are written to a temporary directory and renamed into place, so bad input
or a crash leaves no partial cache behind.

Chat records become ``input_ids`` + ``labels``; labels are -100 everywhere except
the assistant turns (loss on assistant tokens only). The assistant spans come from
rendering the conversation prefix by prefix, which works with any chat template
that renders a conversation's prefixes as prefixes of the whole (true of Llama-3,
Qwen, Mistral and ftflow's tiny template); a template that does not is refused.
Preference records become ``prompt_ids`` / ``chosen_ids`` / ``rejected_ids``,
split the way TRL's DPO trainer splits them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from ftflow import records as recordlib
from ftflow.files import sha256_file

CACHE_VERSION = 1  # bump when the cache layout or the tokenisation logic changes
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


class TemplateError(ValueError):
    """The model's chat template cannot be used to find assistant tokens."""


@dataclass(frozen=True)
class Settings:
    format: str
    fraction: float
    sample_seed: int
    max_length: int


def tokenizer_fingerprint(model_dir: Path) -> dict[str, str]:
    """sha256 of every tokenizer-defining file present in the model directory."""
    return {
        name: sha256_file(Path(model_dir) / name)
        for name in TOKENIZER_FILES
        if (Path(model_dir) / name).exists()
    }


def cache_key(raw: Path, model_dir: Path, settings: Settings) -> tuple[str, dict]:
    inputs = {
        "cache_version": CACHE_VERSION,
        "raw_sha256": sha256_file(raw),
        "tokenizer": tokenizer_fingerprint(model_dir),
        "settings": asdict(settings),
    }
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:24], inputs


# ----------------------------------------------------------------------- tokenising


def _ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages,
        tokenize=True,
        add_generation_prompt=add_generation_prompt,
        return_dict=True,
    )
    return list(out["input_ids"])


def tokenize_chat(tokenizer, messages: list[dict], max_length: int) -> dict:
    """input_ids and labels (-100 outside assistant turns), truncated to max_length."""
    full = _ids(tokenizer, messages)
    labels = [-100] * len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:i], add_generation_prompt=True))
        upto = _ids(tokenizer, messages[: i + 1])
        end = len(upto)
        if full[:end] != upto or start > end:
            raise TemplateError(
                "the chat template does not render a conversation's prefixes as prefixes "
                "of the whole, so assistant tokens cannot be located"
            )
        labels[start:end] = full[start:end]
    truncated = len(full) > max_length
    return {
        "input_ids": full[:max_length],
        "labels": labels[:max_length],
        "truncated": truncated,
    }


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_preference(tokenizer, record: dict, max_length: int) -> dict:
    prompt = _ids(tokenizer, record["prompt"], add_generation_prompt=True)
    chosen = _ids(tokenizer, record["prompt"] + record["chosen"])
    rejected = _ids(tokenizer, record["prompt"] + record["rejected"])
    cut = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
    return {
        "prompt_ids": prompt[:cut],
        "chosen_ids": chosen[cut:],
        "rejected_ids": rejected[cut:],
        "truncated": max(len(chosen), len(rejected)) > max_length,
    }


# ---------------------------------------------------------------------------- cache


def _write_entry(entry: Path, rows: list[dict], meta: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        pq.write_table(pa.Table.from_pylist(rows), tmp / "data.parquet")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        try:
            os.replace(tmp, entry)
        except OSError:
            if not (entry / "meta.json").exists():  # lost a race only if the winner is whole
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_entry(manifest: Path):
    """The cached dataset named by a manifest, in memory (maps write no cache files)."""
    import datasets
    import pyarrow.parquet as pq

    info = json.loads(Path(manifest).read_text())
    table = pq.read_table(Path(info["entry"]) / "data.parquet")
    return datasets.Dataset(table), info


def prepare(
    raw: Path,
    model_dir: Path,
    manifest: Path,
    cache_root: Path,
    settings: Settings,
) -> dict:
    """Validate, sample, tokenise and cache; write the manifest. Returns the manifest."""
    from transformers import AutoTokenizer

    raw, model_dir, manifest = Path(raw), Path(model_dir), Path(manifest)
    key, key_inputs = cache_key(raw, model_dir, settings)
    entry = Path(cache_root) / key
    reused = (entry / "meta.json").exists()
    if not reused:
        records = recordlib.load_records(raw, settings.format)
        sample = recordlib.sample(records, settings.fraction, settings.sample_seed)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if settings.format == "chat":
            rows = [tokenize_chat(tokenizer, r["messages"], settings.max_length) for r in sample]
            tokens = sum(len(r["input_ids"]) for r in rows)
        else:
            rows = [tokenize_preference(tokenizer, r, settings.max_length) for r in sample]
            tokens = sum(len(r["prompt_ids"]) + len(r["chosen_ids"]) for r in rows)
        meta = {
            "key": key,
            "inputs": key_inputs,
            "n_raw": len(records),
            "n_records": len(rows),
            "n_truncated": sum(r.pop("truncated") for r in rows),
            "n_tokens": tokens,
        }
        _write_entry(entry, rows, meta)
    meta = json.loads((entry / "meta.json").read_text())
    info = {
        "key": key,
        "entry": str(entry),
        "raw": str(raw),
        **{k: meta[k] for k in ("n_raw", "n_records", "n_truncated", "n_tokens")},
    }
    text = json.dumps(info, indent=2) + "\n"
    if not (manifest.exists() and manifest.read_text() == text):  # unchanged: leave it be
        manifest.parent.mkdir(parents=True, exist_ok=True)
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, manifest)
    return info | {"reused": reused}
