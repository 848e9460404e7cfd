"""Download everything a run needs, on the login node, before any job reaches a compute node.

On the clusters ftflow targets, login nodes reach the internet and compute nodes do not.
Local Snakemake rules (``localrules``) call the functions here to put every external input
under the project's ``resources/`` directory; jobs on compute nodes then only read local
paths, with the Hugging Face libraries in offline mode (see :mod:`ftflow.offline`).

* :func:`fetch_url` -- one file from ``http(s)://`` or ``file://``, checked against a sha256.
* :func:`fetch_hub` -- a model or dataset repo from the Hugging Face Hub at a pinned commit.
* :func:`copy_local` -- a local file or directory copied into the project.

Guarantees: a destination path either holds the complete, verified result or does not exist.
Every function writes into a temporary sibling of ``dest`` (same directory, hence the same
filesystem) and moves it into place with a rename only once it is complete; on any failure
the temporary is removed. Re-running with a destination that is already complete does nothing.

Assumptions: the process can reach the URL / the Hub (it runs on the login node); the Hub
endpoint is ``HF_ENDPOINT`` (default https://huggingface.co); the Hub token, if any, is in
``HF_TOKEN`` (or the token file of ``hf auth login``) and is read by ``huggingface_hub``
itself -- this module never reads, passes, logs or stores it.

Errors: every failure is raised as :class:`PrefetchError`, with the URL or repo in the message
and the underlying exception chained as ``__cause__``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from ftflow.files import sha256_file

__all__ = [
    "MANIFEST_NAME",
    "PrefetchError",
    "copy_local",
    "fetch_hub",
    "fetch_url",
    "sha256_file",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = ".ftflow-prefetch.json"
"""Written into every directory :func:`fetch_hub` produces: where the files came from."""

_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_COMMIT_RE = re.compile(r"[0-9a-fA-F]{40}")


class PrefetchError(RuntimeError):
    """A prefetch failed; nothing was left at the destination."""


# -- helpers ---------------------------------------------------------------------------------


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


def _install_dir(staged: Path, dest: Path) -> None:
    """Move a finished directory to ``dest``, replacing whatever was there.

    ``os.replace`` cannot replace a non-empty directory, so an old ``dest`` is first renamed
    aside and deleted once the new one is in place.
    """
    old: Path | None = None
    if dest.exists() or dest.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
        os.replace(dest, old / "x")
    os.replace(staged, dest)
    if old is not None:
        _remove(old)


# -- fetch_url -------------------------------------------------------------------------------


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


# -- fetch_hub -------------------------------------------------------------------------------


def _git_blob_sha1(path: Path, size: int) -> str:
    digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _lfs_pointer_sha1(sha256: str, size: int) -> str:
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer.encode()).hexdigest()


def _hash_tree(root: Path) -> dict[str, dict[str, int | str]]:
    files: dict[str, dict[str, int | str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            files[path.relative_to(root).as_posix()] = {
                "sha256": sha256_file(path),
                "size": path.stat().st_size,
            }
    return files


def _verify_against_tree(
    staged: Path,
    files: dict[str, dict[str, int | str]],
    *,
    repo_id: str,
    repo_type: str,
    revision: str,
    allow_patterns: list[str] | None,
) -> bool:
    """Check the downloaded files against the git object ids the Hub listed for the commit.

    ``snapshot_download`` only checks sizes. The commit's tree listing (cached by it under
    ``.cache/huggingface``) gives each file's git blob id: the sha1 of the content for
    regular files, the sha1 of the git-lfs pointer (which holds the sha256) for LFS files.
    Returns False if no listing was cached (nothing to check against).
    """
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    try:
        tree = get_cached_repo_tree(
            repo_id, repo_type=repo_type, revision=revision, local_dir=staged
        )
    except CachedRepoTreeNotFoundError:
        return False
    wanted = {entry.path: entry for entry in tree}
    wanted = {
        p: wanted[p] for p in filter_repo_objects(list(wanted), allow_patterns=allow_patterns)
    }
    missing = sorted(set(wanted) - set(files))
    if missing:
        raise PrefetchError(f"{repo_id}@{revision}: files missing after download: {missing}")
    for path, entry in wanted.items():
        info = files[path]
        size, sha256 = int(info["size"]), str(info["sha256"])
        ok = size == entry.size and entry.blob_id in (
            _git_blob_sha1(staged / path, size),
            _lfs_pointer_sha1(sha256, size),
        )
        if not ok:
            raise PrefetchError(
                f"{repo_id}@{revision}: {path} does not match the commit "
                f"(git oid {entry.blob_id}, {entry.size} bytes; got sha256 {sha256}, {size} bytes)"
            )
    return True


def _manifest_matches(dest: Path, expected: dict[str, object]) -> bool:
    """True if ``dest`` holds a complete earlier download of the same pin."""
    try:
        manifest = json.loads((dest / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    if any(manifest.get(k) != v for k, v in expected.items()):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, info in files.items():
        path = dest / rel
        if not path.is_file() or path.stat().st_size != info.get("size"):
            return False
    return True


def fetch_hub(
    repo_id: str,
    revision: str,
    dest: Path,
    repo_type: Literal["model", "dataset"] = "model",
    allow_patterns: Sequence[str] | str | None = None,
) -> Path:
    """Download a Hugging Face Hub repo at a pinned commit into the directory ``dest``.

    ``revision`` must be a full 40-hex commit sha: branch and tag names move, so a prefetch
    from them could not be reproduced. Files are fetched with
    ``huggingface_hub.snapshot_download(local_dir=<temporary dir next to dest>)``, checked
    against the commit's git object ids, described in ``dest/.ftflow-prefetch.json``
    (source, endpoint, repo, revision, and sha256 + size of every file), and the directory is
    renamed to ``dest``. The ``.cache/huggingface`` bookkeeping folder is not kept.

    ``allow_patterns`` restricts the download to matching files (glob patterns, as in
    ``snapshot_download``). If ``dest`` already holds a download of the same repo, type,
    revision and patterns (per its manifest) nothing is fetched.

    Raises :class:`PrefetchError` if the revision is not pinned, offline mode is on, the Hub
    cannot be reached or refuses (bad token, missing repo or revision), no file matches, or
    a file does not match the commit. Nothing is left at ``dest`` in any error case.
    """
    dest = Path(dest)
    if repo_type not in ("model", "dataset"):
        raise PrefetchError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
    kind = "datasets/" if repo_type == "dataset" else ""
    if not isinstance(revision, str) or not _COMMIT_RE.fullmatch(revision):
        raise PrefetchError(
            f"revision {revision!r} of {repo_type} {repo_id!r} is not pinned: give the full "
            f"40-character commit sha, not a branch or tag name (those can move, so the "
            f"download would not be reproducible). Find the sha of the commit you want on "
            f"https://huggingface.co/{kind}{repo_id}/commits/main or with\n"
            f'  python -c "from huggingface_hub import HfApi; print(HfApi().repo_info('
            f"'{repo_id}', repo_type='{repo_type}', revision='main').sha)\""
        )
    revision = revision.lower()
    patterns = [allow_patterns] if isinstance(allow_patterns, str) else allow_patterns
    patterns = list(patterns) if patterns is not None else None

    from huggingface_hub import __version__ as hub_version
    from huggingface_hub import constants, snapshot_download

    if constants.is_offline_mode():
        raise PrefetchError(
            f"cannot fetch {repo_type} {repo_id}@{revision}: Hugging Face offline mode is on "
            f"(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE was set when huggingface_hub was "
            f"imported). Prefetch runs on the login node, without the offline variables."
        )
    # huggingface_hub reads HF_ENDPOINT once, at import; pass it explicitly so that a value
    # set later (e.g. by the Snakefile) still counts. None means its import-time default.
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
    shown_endpoint = _redact(endpoint or constants.ENDPOINT)
    what = f"{repo_type} {repo_id}@{revision} from {shown_endpoint}"
    identity: dict[str, object] = {
        "source": "huggingface_hub",
        "repo_type": repo_type,
        "repo_id": repo_id,
        "revision": revision,
        "allow_patterns": patterns,
    }
    if _manifest_matches(dest, identity):
        log.info("%s already present in %s", what, dest)
        return dest

    with _staging_dir(dest) as staged:
        log.info("downloading %s", what)
        try:
            snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                local_dir=staged,
                allow_patterns=patterns,
                endpoint=endpoint,
            )
        except Exception as exc:  # HfHubHTTPError, LocalEntryNotFoundError, OSError, ...
            raise PrefetchError(f"could not download {what}: {type(exc).__name__}: {exc}") from exc
        bookkeeping = staged / ".cache" / "huggingface"
        files = _hash_tree(staged)
        files = {p: i for p, i in files.items() if not p.startswith(".cache/huggingface/")}
        if not files:
            raise PrefetchError(
                f"no files downloaded for {what}"
                + (f" (allow_patterns={patterns} matched nothing)" if patterns else "")
            )
        verified = _verify_against_tree(
            staged,
            files,
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            allow_patterns=patterns,
        )
        _remove(bookkeeping)
        if (staged / ".cache").is_dir() and not any((staged / ".cache").iterdir()):
            (staged / ".cache").rmdir()
        manifest = {
            **identity,
            "endpoint": shown_endpoint,
            "verified_against_commit_tree": verified,
            "huggingface_hub_version": hub_version,
            "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": files,
        }
        (staged / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _chmod_default(staged, directory=True)
        _install_dir(staged, dest)
    log.info("fetched %s -> %s (%d files)", what, dest, len(files))
    return dest


# -- copy_local ------------------------------------------------------------------------------


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
                _install_dir(staged, dest)
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
