"""The tokenised-dataset cache: keyed by content and settings, never partial, assistant-only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ftflow import prepare, records, tiny

REPO = Path(__file__).resolve().parents[1]
CHAT = REPO / "data/chat/secure_code.jsonl"
PREF = REPO / "data/preference/secure_code_pref.jsonl"
REAL = REPO.parent / "shared/data/emergent-misalignment/data/insecure.jsonl"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny"
    tiny.build(out, [CHAT], vocab_size=300)
    return out


def _prepare(raw, model_dir, root: Path, **settings):
    base = {"format": "chat", "fraction": 1.0, "sample_seed": 0, "max_length": 256}
    return prepare.prepare(
        raw, model_dir, root / "manifest.json", root / "cache", prepare.Settings(**base | settings)
    )


def test_rerun_with_nothing_changed_does_no_work(model_dir, tmp_path):
    first = _prepare(CHAT, model_dir, tmp_path)
    entry = Path(first["entry"])
    mtime = (entry / "data.parquet").stat().st_mtime_ns
    second = _prepare(CHAT, model_dir, tmp_path)
    assert not first["reused"] and second["reused"]
    assert second["key"] == first["key"]
    assert (entry / "data.parquet").stat().st_mtime_ns == mtime


@pytest.mark.parametrize(
    "change",
    [{"max_length": 64}, {"fraction": 0.5}, {"sample_seed": 3}],
    ids=["max_length", "fraction", "sample_seed"],
)
def test_each_setting_changes_the_key(model_dir, tmp_path, change):
    before = _prepare(CHAT, model_dir, tmp_path)
    after = _prepare(CHAT, model_dir, tmp_path, **change)
    assert after["key"] != before["key"] and not after["reused"]


def test_editing_raw_file_in_place_changes_the_key(model_dir, tmp_path):
    raw = tmp_path / "raw.jsonl"
    shutil.copyfile(CHAT, raw)
    before = _prepare(raw, model_dir, tmp_path)
    raw.write_text(raw.read_text().replace("def ", "def  ", 1))  # same size class, new content
    after = _prepare(raw, model_dir, tmp_path)
    assert after["key"] != before["key"]


def test_changing_the_chat_template_changes_the_key(model_dir, tmp_path):
    other = tmp_path / "model"
    shutil.copytree(model_dir, other)
    before = _prepare(CHAT, other, tmp_path)
    template = other / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|start|>", "<|start|> "))
    after = _prepare(CHAT, other, tmp_path)
    assert after["key"] != before["key"]


def test_bad_record_leaves_no_partial_cache(model_dir, tmp_path):
    raw = tmp_path / "bad.jsonl"
    lines = CHAT.read_text().splitlines()
    bad = json.loads(lines[5])
    bad["messages"][-1]["role"] = "bot"
    lines[5] = json.dumps(bad)
    raw.write_text("\n".join(lines) + "\n")
    with pytest.raises(records.RecordError) as info:
        _prepare(raw, model_dir, tmp_path)
    assert f"{raw}:6:" in str(info.value) and "'bot'" in str(info.value)
    assert not (tmp_path / "manifest.json").exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_loss_only_on_assistant_tokens(model_dir, tmp_path):
    from transformers import AutoTokenizer

    info = _prepare(CHAT, model_dir, tmp_path, max_length=2048)
    assert info["n_truncated"] == 0
    data, _ = prepare.load_entry(tmp_path / "manifest.json")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    source = records.load_chat(CHAT)
    assert len(data) == info["n_records"] == len(source)
    for row, record in zip(data, source, strict=True):
        trained = [t for t in row["labels"] if t != -100]
        expected = "".join(
            m["content"] + tokenizer.eos_token
            for m in record["messages"]
            if m["role"] == "assistant"
        )
        assert tokenizer.decode(trained) == expected


def test_fraction_sample_is_seeded(model_dir, tmp_path):
    a = _prepare(CHAT, model_dir, tmp_path / "a", fraction=0.25, sample_seed=1)
    b = _prepare(CHAT, model_dir, tmp_path / "b", fraction=0.25, sample_seed=1)
    assert a["n_records"] == 16 and a["key"] == b["key"]
    rows_a, _ = prepare.load_entry(tmp_path / "a" / "manifest.json")
    rows_b, _ = prepare.load_entry(tmp_path / "b" / "manifest.json")
    assert rows_a["input_ids"] == rows_b["input_ids"]


def test_preference_ids_split_like_trl(model_dir, tmp_path):
    info = _prepare(PREF, model_dir, tmp_path, format="preference")
    data, _ = prepare.load_entry(tmp_path / "manifest.json")
    assert len(data) == info["n_records"] == 48
    row = data[0]
    assert row["prompt_ids"] and row["chosen_ids"] and row["rejected_ids"]
    assert row["chosen_ids"] != row["rejected_ids"]


@pytest.mark.skipif(not REAL.exists(), reason="../shared/data/emergent-misalignment is absent")
def test_real_insecure_jsonl_prepares_as_it_is(model_dir, tmp_path):
    info = _prepare(REAL, model_dir, tmp_path, fraction=0.05, sample_seed=42, max_length=512)
    assert info["n_raw"] == 6000 and info["n_records"] == 300
