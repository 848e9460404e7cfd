"""Validate raw training data (JSONL) before it is tokenised.

A fine-tuning run should fail in its first second, naming the file and the line, not an
hour later inside a chat template or a collator. This module reads the two raw formats
a dataset may declare in the config (``format: chat | preference``), checks every record
and returns normalised records ready for ``datasets.Dataset.from_list``:

``chat``
    OpenAI chat JSONL, one object per line::

        {"messages": [{"role": "system", "content": "..."},   # optional, first only
                      {"role": "user", "content": "..."},
                      {"role": "assistant", "content": "..."}]}

    Returned as ``{"messages": [{"role", "content"}, ...]}``.

``preference``
    TRL's conversational preference format, one object per line::

        {"prompt":   [{"role": "user", "content": "..."}],       # may start with a system turn
         "chosen":   [{"role": "assistant", "content": "..."}],
         "rejected": [{"role": "assistant", "content": "..."}]}

    or the implicit-prompt form, where ``chosen`` and ``rejected`` are whole
    conversations that share their prompt turns; the shared prefix is split off as
    the prompt, as TRL's ``extract_prompt`` does. Returned as explicit
    ``{"prompt", "chosen", "rejected"}`` records.

What is assumed and decided
    * Files are UTF-8 (a leading BOM is tolerated); records are separated by ``\\n``
      (a trailing ``\\r`` is tolerated). Only ``\\n`` splits lines, so a raw U+2028 inside
      a JSON string does not. Lines holding only spaces, tabs or ``\\r`` are skipped,
      but still counted, so line numbers are those an editor shows.
    * Roles are ``system``, ``user`` and ``assistant`` (no ``tool``/``developer``). A
      system message may only be the first message. A conversation needs a user turn
      and must end with an assistant turn. Consecutive turns of the same role are
      allowed (whether a chat template accepts them is the tokeniser's business).
    * ``content`` must be a string with some non-whitespace text; it is returned
      unchanged (leading spaces matter in continuation data). Multimodal content
      (a list of parts) and ``null`` content are rejected: only text is trained on.
    * Message keys: ``role`` and ``content`` are required; ``name`` is accepted (it
      must be a string) and dropped, since it does not change what is trained on. Any
      other key is an error: ``weight`` (OpenAI's per-turn loss mask), ``tool_calls``,
      ``function_call`` or ``tool_call_id`` change what a record means, and silently
      dropping them would train on something else than the author intended.
    * Extra top-level keys (ids, metadata, scores) are allowed and dropped.
    * A preference record's ``prompt`` that is missing or ``null`` means the implicit
      form. A string ``prompt`` next to conversational ``chosen``/``rejected`` is
      ignored and the prompt is extracted from them, mirroring TRL's
      ``maybe_extract_prompt``. Completions must be assistant messages only, and
      ``chosen`` must differ from ``rejected`` (compared on role and content).
    * Message positions in errors are 0-based list indices, as in ``messages[2]``;
      file lines are 1-based.
    * Duplicate records are not an error (real data sets contain some).

Errors
    Every problem with the data raises :class:`RecordError` (a ``ValueError``) whose
    message reads ``"{path}:{line}: {problem}"``; the problem says what is wrong and what
    is allowed. A file with no records is reported at line 1. The first problem found
    stops the load. ``OSError`` (missing file, a directory, no permission) is not
    wrapped. Bad arguments (an unknown ``fmt``, a ``fraction`` outside (0, 1]) raise a
    plain ``ValueError`` or ``TypeError``.

Sampling
    :func:`sample` picks a seeded, deterministic subset (the config's ``fraction`` and
    ``sample_seed``) and keeps the records in file order.
"""

from __future__ import annotations

import json
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NoReturn, TypedDict, TypeVar

__all__ = [
    "ALLOWED_ROLES",
    "ChatRecord",
    "Message",
    "PreferenceRecord",
    "RecordError",
    "load_chat",
    "load_preference",
    "load_records",
    "sample",
]

ALLOWED_ROLES: tuple[str, ...] = ("system", "user", "assistant")
_ROLES_TEXT = ", ".join(ALLOWED_ROLES)
_OPTIONAL_MESSAGE_KEYS = frozenset({"name"})
_MESSAGE_KEYS_TEXT = "role, content, name"
_JSON_WHITESPACE = " \t\r"

Format = Literal["chat", "preference"]
T = TypeVar("T")


class Message(TypedDict):
    role: str
    content: str


class ChatRecord(TypedDict):
    messages: list[Message]


class PreferenceRecord(TypedDict):
    prompt: list[Message]
    chosen: list[Message]
    rejected: list[Message]


class RecordError(ValueError):
    """A record in a data file is invalid.

    ``str(error)`` is ``"{path}:{line}: {problem}"``; ``path`` (as given to the loader,
    a string), ``line`` (1-based) and ``problem`` are kept as attributes.
    """

    def __init__(self, path: str | os.PathLike[str], line: int, problem: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.path}:{line}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # keep it picklable across processes
        return (type(self), (self.path, self.line, self.problem))


class _Problem(Exception):
    """Raised by the per-record checks; turned into a RecordError with path and line."""


# --------------------------------------------------------------------------- helpers


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _found_keys(obj: dict[str, Any]) -> str:
    keys = list(obj)
    if not keys:
        return "no keys"
    shown = ", ".join(repr(k) for k in keys[:6])
    return "keys " + shown + (", ..." if len(keys) > 6 else "")


def _iter_objects(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """Parse a JSONL file into (line number, object) pairs; raise RecordError on bad lines."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RecordError(
            path,
            line,
            f"not valid UTF-8: byte 0x{data[exc.start]:02x} at column {column} "
            "(data files must be UTF-8 encoded)",
        ) from None

    objects: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(_JSON_WHITESPACE):
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordError(
                path,
                number,
                f"invalid JSON: {exc.msg} at column {exc.colno} "
                "(each line must hold one complete JSON object)",
            ) from None
        if not isinstance(obj, dict):
            raise RecordError(
                path, number, f"expected a JSON object on each line, got {_json_type(obj)}"
            )
        objects.append((number, obj))
    if not objects:
        raise RecordError(path, 1, "no records: the file is empty or has only blank lines")
    return objects


def _check_message(msg: object, where: str) -> Message:
    """Check one message; ``where`` names it, e.g. ``messages[2]``. Returns role+content."""
    if not isinstance(msg, dict):
        raise _Problem(
            f"{where} must be an object with 'role' and 'content', got {_json_type(msg)}"
        )
    if "role" not in msg:
        raise _Problem(f"{where} has no 'role' (allowed: {_ROLES_TEXT})")
    role = msg["role"]
    if role not in ALLOWED_ROLES or not isinstance(role, str):
        raise _Problem(f"unknown role {role!r} in {where} (allowed: {_ROLES_TEXT})")
    if "content" not in msg:
        raise _Problem(f"{where} has no 'content' (a non-empty string)")
    content = msg["content"]
    if not isinstance(content, str):
        raise _Problem(
            f"{where}.content must be a string, got {_json_type(content)} "
            "(only plain-text content is supported)"
        )
    if not content.strip():
        raise _Problem(f"{where}.content is empty or whitespace-only (it must contain text)")
    if len(msg) > 2:
        for key in msg:
            if key in ("role", "content"):
                continue
            if key not in _OPTIONAL_MESSAGE_KEYS:
                raise _Problem(
                    f"{where} has unsupported key {key!r} (allowed: {_MESSAGE_KEYS_TEXT})"
                )
            if not isinstance(msg[key], str):
                raise _Problem(f"{where}.{key} must be a string, got {_json_type(msg[key])}")
    return {"role": role, "content": content}


def _check_list(value: object, key: str, what: str) -> list[Message]:
    """Check that ``value`` (record[key]) is a non-empty list of valid messages."""
    if not isinstance(value, list):
        raise _Problem(f"'{key}' must be a non-empty list of {what}, got {_json_type(value)}")
    if not value:
        raise _Problem(f"'{key}' is empty (it must hold {what})")
    messages = [_check_message(m, f"{key}[{i}]") for i, m in enumerate(value)]
    for i, m in enumerate(messages):
        if m["role"] == "system" and i > 0:
            raise _Problem(
                f"system message at {key}[{i}]; a system message is only allowed first ({key}[0])"
            )
    return messages


def _check_completion(messages: list[Message], key: str, offset: int = 0) -> None:
    """Completions (chosen/rejected) hold assistant messages only."""
    for i, m in enumerate(messages, start=offset):
        if m["role"] != "assistant":
            raise _Problem(
                f"{key}[{i}] has role {m['role']!r}; '{key}' completions must be assistant "
                "messages only (the conversation before them is the prompt)"
            )


# --------------------------------------------------------------------------- chat


def _check_chat(obj: dict[str, Any]) -> ChatRecord:
    if "messages" not in obj:
        hint = ""
        if "chosen" in obj or "rejected" in obj:
            hint = "; this looks like preference data (format: preference)"
        raise _Problem(
            f"missing key 'messages' (found {_found_keys(obj)}); a chat record is "
            '{"messages": [{"role": ..., "content": ...}, ...]}' + hint
        )
    messages = _check_list(obj["messages"], "messages", "{role, content} messages")
    last = messages[-1]
    if last["role"] != "assistant":
        raise _Problem(
            f"last message messages[{len(messages) - 1}] has role {last['role']!r}; "
            "a chat record must end with an assistant turn"
        )
    if not any(m["role"] == "user" for m in messages):
        raise _Problem("no user turn in 'messages' (a chat record needs at least one)")
    return {"messages": messages}


def load_chat(path: str | os.PathLike[str]) -> list[ChatRecord]:
    """Load and validate an OpenAI chat JSONL file.

    Returns one ``{"messages": [{"role", "content"}, ...]}`` per non-blank line, in file
    order. Raises :class:`RecordError` naming ``path`` and the 1-based line of the first
    invalid record (see the module docstring for the rules).
    """
    records: list[ChatRecord] = []
    for number, obj in _iter_objects(path):
        try:
            records.append(_check_chat(obj))
        except _Problem as exc:
            raise RecordError(path, number, str(exc)) from None
    return records


# --------------------------------------------------------------------------- preference


def _check_prompt(prompt: list[Message], label: str) -> None:
    last = prompt[-1]
    if last["role"] != "user":
        raise _Problem(
            f"{label} must end with a user turn, but its last message is from {last['role']!r}"
        )


def _check_preference(obj: dict[str, Any]) -> PreferenceRecord:
    for key in ("chosen", "rejected"):
        if key not in obj:
            hint = "; this looks like chat data (format: chat)" if "messages" in obj else ""
            raise _Problem(
                f"missing key {key!r} (found {_found_keys(obj)}); a preference record is "
                '{"prompt": [...], "chosen": [...], "rejected": [...]}' + hint
            )
    what = "messages (conversational format)"
    chosen = _check_list(obj["chosen"], "chosen", what)
    rejected = _check_list(obj["rejected"], "rejected", what)
    raw_prompt = obj.get("prompt")

    if isinstance(raw_prompt, list):  # explicit form
        prompt = _check_list(raw_prompt, "prompt", "the messages before the completions")
        _check_prompt(prompt, "'prompt'")
        _check_completion(chosen, "chosen")
        _check_completion(rejected, "rejected")
        if chosen == rejected:
            raise _Problem("'chosen' and 'rejected' are identical (a pair needs two answers)")
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    if raw_prompt is not None and not isinstance(raw_prompt, str):
        raise _Problem(
            f"'prompt' must be a list of messages (or left out when 'chosen' and 'rejected' "
            f"are whole conversations), got {_json_type(raw_prompt)}"
        )

    # Implicit form: the prompt is the longest common prefix of chosen and rejected.
    if chosen == rejected:
        raise _Problem("'chosen' and 'rejected' are identical (a pair needs two answers)")
    shared = 0
    for c, r in zip(chosen, rejected, strict=False):
        if c != r:
            break
        shared += 1
    ignored = " ('prompt' is a string, so it is ignored, as TRL does)" if raw_prompt else ""
    if shared == 0:
        raise _Problem(
            "missing 'prompt': give 'prompt' as a list of messages, or make 'chosen' and "
            "'rejected' whole conversations that start with the same prompt turns" + ignored
        )
    for key, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) == shared:
            other = "rejected" if key == "chosen" else "chosen"
            raise _Problem(
                f"'{key}' is a prefix of '{other}': nothing is left of it after the "
                f"{shared} shared prompt turn(s)"
            )
    label = f"the implicit prompt (the {shared} turn(s) shared by 'chosen' and 'rejected')"
    _check_prompt(chosen[:shared], label + ignored)
    _check_completion(chosen[shared:], "chosen", offset=shared)
    _check_completion(rejected[shared:], "rejected", offset=shared)
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def load_preference(path: str | os.PathLike[str]) -> list[PreferenceRecord]:
    """Load and validate a TRL conversational preference JSONL file.

    Accepts explicit ``{"prompt", "chosen", "rejected"}`` records and the implicit-prompt
    form (``chosen``/``rejected`` as whole conversations sharing their prompt turns).
    Returns explicit records in file order. Raises :class:`RecordError` naming ``path``
    and the 1-based line of the first invalid record.
    """
    records: list[PreferenceRecord] = []
    for number, obj in _iter_objects(path):
        try:
            records.append(_check_preference(obj))
        except _Problem as exc:
            raise RecordError(path, number, str(exc)) from None
    return records


# --------------------------------------------------------------------------- dispatch, sample


def load_records(
    path: str | os.PathLike[str], fmt: Format
) -> list[ChatRecord] | list[PreferenceRecord]:
    """Load ``path`` with the loader for ``fmt`` (``"chat"`` or ``"preference"``)."""
    if fmt == "chat":
        return load_chat(path)
    if fmt == "preference":
        return load_preference(path)
    raise ValueError(f"unknown data format {fmt!r} (allowed: chat, preference)")


def sample(records: Sequence[T], fraction: float, seed: int) -> list[T]:
    """Return a seeded, deterministic sample of ``records``, in their original order.

    ``fraction`` must be in (0, 1]. With ``fraction == 1`` all records are returned (a
    new list, same order). Otherwise ``round(fraction * n)`` records are kept (Python's
    ``round``, so halves go to the even number), at least 1 when ``records`` is not
    empty; which ones is decided by ``random.Random(seed).sample`` over the indices, so
    the same records, fraction and seed always give the same sample, on any machine.
    Raises ``ValueError`` for a fraction outside (0, 1], ``TypeError`` for a non-number.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, int | float):
        raise TypeError(f"fraction must be a number in (0, 1], got {type(fraction).__name__}")
    if not 0 < fraction <= 1:  # also rejects NaN
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    n = len(records)
    if fraction == 1 or n == 0:
        return list(records)
    k = min(n, max(1, round(fraction * n)))
    keep = sorted(random.Random(seed).sample(range(n), k))
    return [records[i] for i in keep]


# ------------------------------------------------------------------ the user's own file


def source_name(source: dict[str, Any]) -> str:
    """The file the user named for a dataset ``source:`` (path, URL or hub repo)."""
    if "path" in source:
        return str(source["path"])
    if "url" in source:
        return str(source["url"])
    if "hub" in source:
        return f"hub dataset {source['hub']}@{source.get('revision', '?')} {source.get('files')}"
    return "?"


def user_message(error: RecordError, source: dict[str, Any] | None) -> str:
    """One line that names the user's file and line first, then the prefetched copy."""
    if not source:
        return str(error)
    return f"{source_name(source)}:{error.line}: {error.problem} (read from the copy {error.path})"


def exit_with(message: str) -> NoReturn:
    """End a job script with one line in its log and on the console (Snakemake shows
    the job's stderr only through the log; the console gets ``sys.__stderr__``)."""
    print(message, file=sys.stderr, flush=True)
    if sys.stderr is not sys.__stderr__:
        print(message, file=sys.__stderr__, flush=True)
    raise SystemExit(1)
