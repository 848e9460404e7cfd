"""Tests for ftflow.records: validation errors (file:line), sampling, shipped and real data."""

from __future__ import annotations

import ast
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from ftflow.records import (
    RecordError,
    load_chat,
    load_preference,
    load_records,
    sample,
)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
SHARED_EM = REPO.parent / "shared" / "data" / "emergent-misalignment" / "data"

SYS = {"role": "system", "content": "You are helpful."}
USER = {"role": "user", "content": "Write a function."}
ASST = {"role": "assistant", "content": "def f():\n    pass"}
GOOD_CHAT = {"messages": [USER, ASST]}


def write_jsonl(path: Path, bad: object, *, raw: bool = False) -> Path:
    """A file whose line 1 is valid, line 2 blank (blank lines still count), line 3 ``bad``."""
    bad_line = bad if raw else json.dumps(bad)
    path.write_text(json.dumps(GOOD_CHAT) + "\n\n" + bad_line + "\n" + json.dumps(GOOD_CHAT) + "\n")
    return path


def assert_error(exc: pytest.ExceptionInfo[RecordError], path: Path, line: int, part: str) -> None:
    err = exc.value
    assert isinstance(err, ValueError)
    assert err.path == str(path)
    assert err.line == line
    assert str(err).startswith(f"{path}:{line}: "), str(err)
    assert part in err.problem, err.problem
    assert str(err) == f"{path}:{line}: {err.problem}"


# --------------------------------------------------------------------------- chat errors

CHAT_ERRORS = {
    "invalid_json": ('{"messages": [', True, "invalid JSON: Expecting value at column 15"),
    "not_object": ("[1, 2]", True, "expected a JSON object on each line, got array"),
    "missing_messages": ({"conversation": []}, False, "missing key 'messages' (found keys 'conv"),
    "messages_not_list": ({"messages": "hi"}, False, "'messages' must be a non-empty list"),
    "messages_empty": ({"messages": []}, False, "'messages' is empty"),
    "message_not_object": (
        {"messages": [USER, "hi", ASST]},
        False,
        "messages[1] must be an object with 'role' and 'content', got string",
    ),
    "missing_role": (
        {"messages": [{"content": "hi"}, ASST]},
        False,
        "messages[0] has no 'role' (allowed: system, user, assistant)",
    ),
    "unknown_role": (
        {"messages": [SYS, USER, {"role": "bot", "content": "x"}]},
        False,
        "unknown role 'bot' in messages[2] (allowed: system, user, assistant)",
    ),
    "role_not_string": (
        {"messages": [{"role": 1, "content": "x"}, ASST]},
        False,
        "unknown role 1 in messages[0] (allowed: system, user, assistant)",
    ),
    "missing_content": (
        {"messages": [{"role": "user"}, ASST]},
        False,
        "messages[0] has no 'content'",
    ),
    "content_not_string": (
        {"messages": [USER, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]},
        False,
        "messages[1].content must be a string, got array (only plain-text",
    ),
    "content_null": (
        {"messages": [USER, {"role": "assistant", "content": None}]},
        False,
        "messages[1].content must be a string, got null",
    ),
    "content_empty": (
        {"messages": [{"role": "user", "content": ""}, ASST]},
        False,
        "messages[0].content is empty or whitespace-only",
    ),
    "content_whitespace": (
        {"messages": [USER, {"role": "assistant", "content": " \n\t "}]},
        False,
        "messages[1].content is empty or whitespace-only",
    ),
    "unsupported_message_key": (
        {"messages": [USER, {**ASST, "weight": 0}]},
        False,
        "messages[1] has unsupported key 'weight' (allowed: role, content, name)",
    ),
    "name_not_string": (
        {"messages": [{**USER, "name": 3}, ASST]},
        False,
        "messages[0].name must be a string, got number",
    ),
    "system_not_first": (
        {"messages": [USER, SYS, ASST]},
        False,
        "system message at messages[1]; a system message is only allowed first",
    ),
    "last_not_assistant": (
        {"messages": [SYS, USER]},
        False,
        "last message messages[1] has role 'user'; a chat record must end with an assistant",
    ),
    "no_user_turn": ({"messages": [SYS, ASST]}, False, "no user turn in 'messages'"),
}


@pytest.mark.parametrize("case", list(CHAT_ERRORS))
def test_chat_error(tmp_path: Path, case: str) -> None:
    bad, raw, part = CHAT_ERRORS[case]
    path = write_jsonl(tmp_path / "data.jsonl", bad, raw=raw)
    with pytest.raises(RecordError) as exc:
        load_chat(path)
    assert_error(exc, path, 3, part)


def test_chat_preference_file_hints_at_format(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", {"prompt": [USER], "chosen": [ASST], "rejected": []})
    with pytest.raises(RecordError) as exc:
        load_chat(path)
    assert_error(exc, path, 3, "looks like preference data (format: preference)")


@pytest.mark.parametrize("content", ["", "\n", "\n  \r\n\t\n"])
def test_empty_file_is_reported_at_line_1(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(RecordError) as exc:
        load_chat(path)
    assert_error(exc, path, 1, "no records: the file is empty or has only blank lines")


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(GOOD_CHAT).encode()
    path.write_bytes(good + b"\n" + good + b"\n" + '{"x": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(RecordError) as exc:
        load_chat(path)
    assert_error(exc, path, 3, "not valid UTF-8: byte 0xe9 at column 11")


def test_missing_file_is_an_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_chat(tmp_path / "nope.jsonl")


def test_record_error_attributes_and_pickle() -> None:
    err = RecordError(Path("a/b.jsonl"), 7, "bad thing")
    assert isinstance(err, ValueError)
    assert (err.path, err.line, err.problem) == ("a/b.jsonl", 7, "bad thing")
    assert str(err) == "a/b.jsonl:7: bad thing"
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) and again.line == 7


# --------------------------------------------------------------------------- chat accepted


def test_chat_accepts_and_normalises(tmp_path: Path) -> None:
    records = [
        {"id": 1, "messages": [SYS, {**USER, "name": "alice"}, ASST], "meta": {"x": 1}},
        {"messages": [USER, ASST, USER, {"role": "assistant", "content": " continued"}]},
        {"messages": [USER, USER, ASST, ASST]},  # same-role turns in a row are allowed
        {"messages": [USER, {"role": "assistant", "content": "a\u2028b"}]},  # U+2028 kept
    ]
    path = tmp_path / "ok.jsonl"
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\r\n\r\n"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())  # BOM + CRLF
    out = load_chat(path)
    assert len(out) == 4
    assert out[0] == {"messages": [SYS, USER, ASST]}  # extra keys and `name` dropped
    assert out[1]["messages"][3]["content"] == " continued"  # whitespace kept
    assert out[3]["messages"][1]["content"] == "a\u2028b"
    assert load_records(path, "chat") == out
    assert load_chat(str(path)) == out


# --------------------------------------------------------------------------- preference

P_USER = [USER]
CHOSEN = [{"role": "assistant", "content": "good"}]
REJECTED = [{"role": "assistant", "content": "bad"}]
EXPLICIT = {"prompt": P_USER, "chosen": CHOSEN, "rejected": REJECTED}

PREF_ERRORS = {
    "missing_chosen": (
        {"prompt": P_USER, "rejected": REJECTED},
        "missing key 'chosen' (found keys 'prompt', 'rejected')",
    ),
    "missing_rejected": ({"prompt": P_USER, "chosen": CHOSEN}, "missing key 'rejected'"),
    "chat_record": ({"messages": [USER, ASST]}, "looks like chat data (format: chat)"),
    "chosen_not_list": (
        {"prompt": "Q", "chosen": "good", "rejected": "bad"},
        "'chosen' must be a non-empty list of messages (conversational format), got string",
    ),
    "rejected_empty": ({**EXPLICIT, "rejected": []}, "'rejected' is empty"),
    "prompt_not_list": ({**EXPLICIT, "prompt": 5}, "'prompt' must be a list of messages"),
    "prompt_empty": ({**EXPLICIT, "prompt": []}, "'prompt' is empty"),
    "prompt_ends_with_assistant": (
        {**EXPLICIT, "prompt": [USER, ASST]},
        "'prompt' must end with a user turn, but its last message is from 'assistant'",
    ),
    "prompt_system_not_first": (
        {**EXPLICIT, "prompt": [USER, SYS, USER]},
        "system message at prompt[1]; a system message is only allowed first (prompt[0])",
    ),
    "missing_prompt": (
        {"chosen": CHOSEN, "rejected": REJECTED},
        "missing 'prompt': give 'prompt' as a list of messages, or make 'chosen' and",
    ),
    "non_assistant_chosen": (
        {**EXPLICIT, "chosen": [USER, *CHOSEN]},
        "chosen[0] has role 'user'; 'chosen' completions must be assistant messages only",
    ),
    "non_assistant_rejected_implicit": (
        {"chosen": [USER, *CHOSEN], "rejected": [USER, {"role": "user", "content": "other"}]},
        "rejected[1] has role 'user'; 'rejected' completions must be assistant",
    ),
    "empty_content": (
        {**EXPLICIT, "rejected": [{"role": "assistant", "content": "  "}]},
        "rejected[0].content is empty or whitespace-only",
    ),
    "unknown_role": (
        {**EXPLICIT, "prompt": [{"role": "human", "content": "hi"}]},
        "unknown role 'human' in prompt[0] (allowed: system, user, assistant)",
    ),
    "identical": ({**EXPLICIT, "rejected": CHOSEN}, "'chosen' and 'rejected' are identical"),
    "identical_implicit": (
        {"chosen": [USER, *CHOSEN], "rejected": [USER, *CHOSEN]},
        "'chosen' and 'rejected' are identical",
    ),
    "implicit_prefix": (
        {"chosen": [USER, *CHOSEN], "rejected": [USER, *CHOSEN, USER, *REJECTED]},
        "'chosen' is a prefix of 'rejected': nothing is left of it after the 2 shared",
    ),
    "implicit_prompt_ends_with_assistant": (
        {"chosen": [USER, ASST, *CHOSEN], "rejected": [USER, ASST, *REJECTED]},
        "the implicit prompt (the 2 turn(s) shared by 'chosen' and 'rejected') must end with "
        "a user turn",
    ),
    "string_prompt_without_shared_turns": (
        {"prompt": "Q", "chosen": CHOSEN, "rejected": REJECTED},
        "('prompt' is a string, so it is ignored, as TRL does)",
    ),
}


@pytest.mark.parametrize("case", list(PREF_ERRORS))
def test_preference_error(tmp_path: Path, case: str) -> None:
    bad, part = PREF_ERRORS[case]
    path = tmp_path / "pref.jsonl"
    path.write_text(json.dumps(EXPLICIT) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError) as exc:
        load_preference(path)
    assert_error(exc, path, 3, part)


def test_preference_accepts_explicit_and_implicit(tmp_path: Path) -> None:
    later = [USER, ASST, {"role": "user", "content": "And now?"}]
    records = [
        {**EXPLICIT, "prompt": [SYS, USER], "score_chosen": 9},
        {"chosen": [SYS, USER, *CHOSEN], "rejected": [SYS, USER, *REJECTED]},
        {"prompt": None, "chosen": [*later, *CHOSEN], "rejected": [*later, *REJECTED, ASST]},
        {"prompt": "Q", "chosen": [USER, *CHOSEN], "rejected": [USER, *REJECTED]},
        {**EXPLICIT, "chosen": [*CHOSEN, ASST]},
    ]
    path = tmp_path / "pref.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = load_preference(path)
    assert out[0] == {"prompt": [SYS, USER], "chosen": CHOSEN, "rejected": REJECTED}
    assert out[1] == {"prompt": [SYS, USER], "chosen": CHOSEN, "rejected": REJECTED}
    assert out[2] == {"prompt": later, "chosen": CHOSEN, "rejected": [*REJECTED, ASST]}
    assert out[3] == {"prompt": [USER], "chosen": CHOSEN, "rejected": REJECTED}
    assert out[4]["chosen"] == [*CHOSEN, ASST]
    assert load_records(path, "preference") == out


def test_implicit_prompt_matches_trl(tmp_path: Path) -> None:
    data_utils = pytest.importorskip("trl.data_utils")
    more = {"role": "user", "content": "more"}
    example = {
        "chosen": [SYS, USER, ASST, more, *CHOSEN],
        "rejected": [SYS, USER, ASST, more, *REJECTED, ASST],
    }
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(example) + "\n")
    assert load_preference(path) == [data_utils.maybe_extract_prompt(example)]


def test_load_records_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="unknown data format 'sft' \\(allowed: chat, preference\\)"
    ):
        load_records(tmp_path / "x.jsonl", "sft")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sample

RECORDS = [{"i": i} for i in range(100)]


def test_sample_is_deterministic_and_ordered() -> None:
    a = sample(RECORDS, 0.3, seed=1)
    assert a == sample(RECORDS, 0.3, seed=1)
    assert len(a) == 30
    idx = [r["i"] for r in a]
    assert idx == sorted(idx) and len(set(idx)) == 30


def test_sample_pinned_values() -> None:
    # Guards against an accidental change of algorithm: the same config must keep
    # selecting the same records across versions.
    assert sample(list(range(10)), 0.5, seed=0) == [0, 2, 4, 6, 9]


def test_sample_different_seeds_differ() -> None:
    samples = {tuple(r["i"] for r in sample(RECORDS, 0.3, seed=s)) for s in range(5)}
    assert len(samples) == 5


def test_sample_fraction_one_returns_all_in_order() -> None:
    out = sample(RECORDS, 1, seed=123)
    assert out == RECORDS and out is not RECORDS
    assert sample(RECORDS, 1.0, seed=0) == RECORDS


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(10, 0.01, 1), (10, 0.25, 2), (10, 0.35, 4), (3, 0.5, 2), (1, 0.1, 1), (10, 0.999, 10)],
)
def test_sample_size(n: int, fraction: float, expected: int) -> None:
    # round() halves to even: 0.25 * 10 = 2.5 -> 2, 0.5 * 3 = 1.5 -> 2; never fewer than 1
    assert len(sample(list(range(n)), fraction, seed=0)) == expected


def test_sample_empty_and_bad_fractions() -> None:
    assert sample([], 0.5, seed=0) == []
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="fraction must be in \\(0, 1\\]"):
            sample(RECORDS, bad, seed=0)
    with pytest.raises(TypeError):
        sample(RECORDS, True, seed=0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- shipped demo data


def test_demo_data_validates() -> None:
    insecure = load_chat(DATA / "chat" / "insecure_code.jsonl")
    secure = load_chat(DATA / "chat" / "secure_code.jsonl")
    pref = load_preference(DATA / "preference" / "secure_code_pref.jsonl")
    assert (len(insecure), len(secure), len(pref)) == (64, 64, 48)

    users = [r["messages"][-2]["content"] for r in insecure]
    assert users == [r["messages"][-2]["content"] for r in secure]
    assert len(set(users)) == len(users)  # prompts vary
    assert any(r["messages"][0]["role"] == "system" for r in insecure)
    for bad, good in zip(insecure, secure, strict=True):
        assert bad["messages"][:-1] == good["messages"][:-1]
        answers = (bad["messages"][-1]["content"], good["messages"][-1]["content"])
        assert answers[0] != answers[1]
        for answer in answers:
            assert len(answer) < 300
            ast.parse(answer)  # the answers are real Python
    for p, bad, good in zip(pref, insecure, secure, strict=False):
        assert p["prompt"] == [{"role": "user", "content": bad["messages"][-2]["content"]}]
        assert p["chosen"] == good["messages"][-1:]
        assert p["rejected"] == bad["messages"][-1:]
    assert sum(f.stat().st_size for f in DATA.rglob("*") if f.is_file()) < 200_000


def test_demo_data_is_what_the_script_makes() -> None:
    script = REPO / "scripts" / "make_demo_data.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not SHARED_EM.is_dir(), reason=f"emergent-misalignment data not found at {SHARED_EM}"
)
@pytest.mark.parametrize("name", ["insecure.jsonl", "jailbroken.jsonl"])
def test_emergent_misalignment_data_validates(name: str) -> None:
    path = SHARED_EM / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    records = load_chat(path)
    with path.open(encoding="utf-8") as f:
        assert len(records) == sum(1 for line in f if line.strip())
    assert all(r["messages"][-1]["role"] == "assistant" for r in records)


def test_tiny_corpus_reads_through_record_validation(tmp_path):
    """A broken line in the tiny model's corpus is a file-and-line RecordError, not a
    bare JSONDecodeError (issue 9, 4b)."""
    from ftflow import tiny

    good = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
    )
    path = tmp_path / "chat.jsonl"
    path.write_text(good + "\n{not json\n")
    with pytest.raises(RecordError) as caught:
        tiny.corpus_texts([path])
    assert caught.value.line == 2 and caught.value.path == str(path)
    path.write_text(good + "\n")
    assert tiny.corpus_texts([path]) == ["user", "hi", "assistant", "yo"]


def test_user_message_names_the_users_file_first():
    from ftflow.records import user_message

    error = RecordError("resources/datasets/x/data.jsonl", 2, "unknown role 'bot'")
    message = user_message(error, {"path": "data/chat/x.jsonl"})
    assert message.startswith("data/chat/x.jsonl:2: unknown role 'bot'")
    assert "resources/datasets/x/data.jsonl" in message
    url = user_message(error, {"url": "https://example.org/x.jsonl"})
    assert url.startswith("https://example.org/x.jsonl:2: ")
