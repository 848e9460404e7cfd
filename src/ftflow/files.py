"""Small file helpers every module shares: hashing, atomic writes, JSON lines.

Atomic means a reader (or a killed job) never sees a half-written file: data goes to a
temporary sibling first and is renamed over the target with ``os.replace``.

JSON lines are written with ``ensure_ascii=False`` (answers stay readable) and read back
by splitting on ``\\n`` only: ``str.splitlines`` would also split on U+0085, U+2028 and
U+2029, which JSON leaves unescaped inside strings, so a model's answer containing one
would break its own line in two.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; create the parent folder."""
    return write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; create the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, data: object, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def jsonl_line(row: Mapping) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(rows: Iterable[Mapping], path: str | Path) -> Path:
    """One JSON object per line, atomically."""
    return write_text(path, "".join(jsonl_line(row) for row in rows))


def iter_jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of non-blank lines, split on ``\\n`` only."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield number, line


def read_jsonl(path: str | Path) -> list[dict]:
    """Read what :func:`write_jsonl` wrote, exactly (whatever characters it holds)."""
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for _, line in iter_jsonl_lines(text)]


@contextlib.contextmanager
def exclusive(lock: str | Path, waiting: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``lock`` (created if missing), across
    processes and jobs on a shared filesystem; print ``waiting`` first if another
    holder makes this one wait."""
    import fcntl

    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"[ftflow] {waiting} ({lock})", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling; it replaces ``dest`` only on success."""
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, dest)


def replace_dir(staged: Path, dest: Path) -> None:
    """Move ``staged`` to ``dest``, replacing whatever was there (folder, file or link).

    ``os.replace`` cannot replace a non-empty directory, so an old ``dest`` is first moved
    into a fresh temporary folder beside it and deleted once the new one is in place.
    """
    old = None
    if dest.exists() or dest.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / "x")
    os.replace(staged, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
