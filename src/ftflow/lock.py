"""The lock file: URL sources pinned by their first fetch.

A dataset source ``{url}`` without a ``sha256`` (its digest not known in advance) is
fetched once and its sha256 and size are recorded in ``ftflow.lock.yaml`` at the workflow
root — a file to commit beside the config. Every later fetch of that URL must give the
same bytes: a changed upstream file is an error naming the URL, both digests and the lock
file (delete the URL's entry to accept the new content deliberately).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ftflow import files, prefetch

LOCK_FILE = Path("ftflow.lock.yaml")
HEADER = (
    "# ftflow lock file: what each unpinned URL source gave at its first fetch.\n"
    "# Commit it with the config; a changed upstream file is then an error.\n"
)


def read(lock: Path = LOCK_FILE) -> dict[str, dict]:
    if not lock.exists():
        return {}
    return (yaml.safe_load(lock.read_text()) or {}).get("urls", {})


def fetch(url: str, dest: Path, sha256: str | None, lock: Path = LOCK_FILE) -> Path:
    """Fetch ``url`` pinned by ``sha256``, else by the lock file, else record it there."""
    if sha256:
        return prefetch.fetch_url(url, dest, sha256)
    entries = read(lock)
    if url in entries:
        try:
            return prefetch.fetch_url(url, dest, entries[url]["sha256"])
        except prefetch.PrefetchError as error:
            if "sha256 mismatch" not in str(error):
                raise
            raise prefetch.PrefetchError(
                f"{error} — the digest was recorded in {lock} at the first fetch, so the "
                "upstream file changed; delete its entry there to accept the new content"
            ) from None
    prefetch.fetch_url(url, dest, None)
    entries[url] = {"sha256": files.sha256_file(dest), "size": Path(dest).stat().st_size}
    files.write_text(lock, HEADER + yaml.safe_dump({"urls": entries}, sort_keys=True))
    return dest
