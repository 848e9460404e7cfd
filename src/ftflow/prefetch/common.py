"""What every prefetch shares: the error, the manifest name, staging and install."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

MANIFEST_NAME = ".ftflow-prefetch.json"
"""Written into every directory :func:`fetch_hub` produces: where the files came from."""

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_COMMIT_RE = re.compile(r"[0-9a-fA-F]{40}")


class PrefetchError(RuntimeError):
    """A prefetch failed; nothing was left at the destination."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _chmod_default(path: Path, *, directory: bool) -> None:
    """``mkstemp``/``mkdtemp`` create 0600/0700; give results the usual umask-based mode
    so that other members of the project group can read them."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _redact(url: str) -> str:
    """Drop ``user:password@`` from a URL before it goes into a message or a manifest."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@contextmanager
def _staging_dir(dest: Path) -> Iterator[Path]:
    """A fresh empty directory next to ``dest``, removed on exit unless it was moved away."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        yield tmp
    finally:
        _remove(tmp)
