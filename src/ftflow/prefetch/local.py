"""One file from a URL (sha256-checked), or a local file or directory copied in."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from ftflow.files import replace_dir, sha256_file
from ftflow.prefetch.common import (
    _CHUNK,
    _SHA256_RE,
    PrefetchError,
    _chmod_default,
    _redact,
    _staging_dir,
    log,
)


def fetch_url(url: str, dest: Path, sha256: str | None, *, timeout: float = 60.0) -> Path:
    """Download ``url`` (``http://``, ``https://`` or ``file://``) to the file ``dest``.

    The content is streamed into a temporary file in ``dest``'s directory, hashed on the way,
    and renamed to ``dest`` only if its sha256 equals ``sha256``. If ``dest`` already holds a
    file with that digest nothing is downloaded; a ``dest`` with any other content is removed
    first (it can never become valid).

    Raises :class:`PrefetchError` on a bad digest argument, an unsupported scheme, any
    download error, or a digest mismatch (the message names the URL, the expected and the
    actual digest). In every error case neither ``dest`` nor a temporary file is left behind.
    ``sha256=None`` (a source pinned by its first fetch, :mod:`ftflow.lock`) accepts any
    content: the caller records its digest.
    """
    dest = Path(dest)
    shown = _redact(url)
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256)):
        raise PrefetchError(
            f"sha256 for {shown} must be 64 hex characters, got {sha256!r}; "
            f"compute it with `sha256sum FILE`"
        )
    expected = sha256.lower() if sha256 else None
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https", "file"):
        raise PrefetchError(f"cannot fetch {shown}: only http://, https:// and file:// URLs work")
    if dest.is_dir():
        raise PrefetchError(f"cannot fetch {shown} to {dest}: it is a directory")

    if dest.exists():
        if expected and sha256_file(dest) == expected:
            log.info("%s already present with sha256 %s", dest, expected)
            return dest
        log.warning("%s exists with a different sha256; removing it and fetching again", dest)
        dest.unlink()

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "ftflow-prefetch"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise PrefetchError(f"could not download {shown}: {exc}") from exc
        actual = digest.hexdigest()
        if expected and actual != expected:
            raise PrefetchError(
                f"sha256 mismatch for {shown}: expected {expected}, got {actual} "
                f"({size} bytes); nothing was written to {dest}"
            )
        _chmod_default(tmp, directory=False)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("fetched %s -> %s (%d bytes, sha256 %s)", shown, dest, size, actual)
    return dest


def copy_local(src: Path, dest: Path) -> Path:
    """Copy a local file or directory to ``dest`` (a temporary copy, then a rename).

    Symlinks inside a copied directory are copied as the files they point to, so the result
    does not depend on anything outside the project. An existing ``dest`` is replaced.
    Raises :class:`PrefetchError` if ``src`` does not exist or the copy fails.
    """
    src, dest = Path(src), Path(dest)
    if not src.exists():
        hint = " (a broken symlink)" if src.is_symlink() else ""
        raise PrefetchError(
            f"local source {src}{hint} does not exist (absolute: {src.absolute()}); "
            f"fix the path in the config or create it first"
        )
    if dest.resolve() == src.resolve() or (
        src.is_dir() and dest.resolve().is_relative_to(src.resolve())
    ):
        raise PrefetchError(f"cannot copy {src} to {dest}: the destination is inside the source")
    try:
        if src.is_dir():
            with _staging_dir(dest) as staged:
                shutil.copytree(src, staged, dirs_exist_ok=True)
                replace_dir(staged, dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent
            )
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                shutil.copy2(src, tmp)
                os.replace(tmp, dest)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    except OSError as exc:
        raise PrefetchError(f"could not copy {src} to {dest}: {exc}") from exc
    log.info("copied %s -> %s", src, dest)
    return dest
