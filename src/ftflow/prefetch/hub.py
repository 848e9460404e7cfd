"""A Hugging Face Hub repo at a pinned commit, checked against the commit's tree."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from ftflow.files import replace_dir, sha256_file
from ftflow.prefetch.common import (
    _CHUNK,
    _COMMIT_RE,
    MANIFEST_NAME,
    PrefetchError,
    _chmod_default,
    _redact,
    _remove,
    _staging_dir,
    log,
)


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
        replace_dir(staged, dest)
    log.info("fetched %s -> %s (%d files)", what, dest, len(files))
    return dest
