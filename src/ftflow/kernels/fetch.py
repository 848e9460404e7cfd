"""``prefetch_kernel_sources``: a kernel's pinned source archive, on the login node.

Sources:

* ``{pypi, version, sha256}`` — the sdist from the package index ``PIP_INDEX_URL`` (default
  https://pypi.org/simple), found through the index's simple API (PEP 691 JSON, or the
  PEP 503 HTML page a mirror serves). ``pip download`` cannot do this for mamba_ssm and
  causal_conv1d: their ``setup.py`` imports torch and tries CUDA just to read metadata;
* ``{url, sha256}`` — one archive, e.g. a release tarball at a commit;
* ``{path}`` — a source folder of the user's, packed into a reproducible archive.

The archive lands at ``resources/kernels/src/{kernel}.tar.gz`` only once its sha256 is the
pinned one (:func:`ftflow.prefetch.fetch_url`); a sidecar ``{kernel}.json`` records where it
came from. On any error nothing is left there.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

from ftflow import files, prefetch
from ftflow.kernels import Kernel, KernelError, tree_sha256
from ftflow.prefetch.common import _redact

DEFAULT_INDEX = "https://pypi.org/simple"
SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _Links(HTMLParser):
    """The ``<a href>`` links of a PEP 503 simple page: (filename, url)."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self._href = dict(attrs).get("href")

    def handle_data(self, data):
        if self._href is not None:
            self.links.append((data.strip(), self._href))
            self._href = None


def index_files(project: str, index: str | None = None, timeout: float = 60) -> list[dict]:
    """The files an index lists for ``project``: ``{filename, url, sha256}`` each."""
    index = (index or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")
    page = f"{index}/{_normalise(project)}/"
    request = urllib.request.Request(page, headers={"Accept": f"{SIMPLE_JSON}, text/html;q=0.1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            kind = response.headers.get("Content-Type", "")
            body = response.read()
    except OSError as error:
        raise KernelError(f"cannot read the package index page {_redact(page)}: {error}") from error
    if SIMPLE_JSON in kind or body.lstrip().startswith(b"{"):
        return [
            {
                "filename": f["filename"],
                "url": urljoin(page, f["url"]),
                "sha256": f.get("hashes", {}).get("sha256"),
            }
            for f in json.loads(body)["files"]
        ]
    parser = _Links()
    parser.feed(body.decode("utf-8", "replace"))
    found = []
    for filename, href in parser.links:
        url, _, fragment = href.partition("#")
        sha = fragment.removeprefix("sha256=") if fragment.startswith("sha256=") else None
        found.append({"filename": filename, "url": urljoin(page, url), "sha256": sha})
    return found


def _sdist(kernel: Kernel) -> dict:
    source = kernel.source
    stem = f"{_normalise(source['pypi']).replace('-', '_')}-{source['version']}"
    wanted = {f"{stem}.tar.gz", f"{stem.replace('_', '-')}.tar.gz"}
    listed = index_files(source["pypi"])
    sdists = [f for f in listed if f["filename"].lower() in {w.lower() for w in wanted}]
    if not sdists:
        versions = sorted({f["filename"] for f in listed if f["filename"].endswith(".tar.gz")})
        raise KernelError(
            f"kernel {kernel.name}: the index lists no source archive of {source['pypi']} "
            f"{source['version']} (source archives listed: {', '.join(versions[-5:]) or 'none'})"
        )
    return sdists[0]


def pack(folder: str | Path, dest: Path, top: str) -> Path:
    """A reproducible ``.tar.gz`` of a source folder (sorted, no times, no owners)."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            rel = path.relative_to(folder)
            if any(p in ("build", "dist", "__pycache__", ".git") or p.endswith(".egg-info")
                   for p in rel.parts):  # fmt: skip
                continue
            info = tarfile.TarInfo(f"{top}/{rel.as_posix()}")
            info.size = path.stat().st_size
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with open(path, "rb") as handle:
                tar.addfile(info, handle)
    data = gzip.compress(buffer.getvalue(), mtime=0)
    files.write_bytes(dest, data)
    return dest


def fetch(kernel: Kernel, dest: str | Path) -> dict:
    """Fetch ``kernel``'s source archive to ``dest``; return what the sidecar records."""
    dest = Path(dest)
    source = kernel.source
    if "path" in source:
        if not Path(source["path"]).is_dir():
            raise KernelError(
                f"config key kernels.packages.{kernel.name}.source.path: {source['path']} "
                "is not a folder"
            )
        pack(source["path"], dest, top=kernel.name)
        origin = {"path": source["path"], "tree_sha256": tree_sha256(source["path"])}
    elif "pypi" in source:
        sdist = _sdist(kernel)
        if sdist["sha256"] and sdist["sha256"] != source["sha256"]:
            raise KernelError(
                f"kernel {kernel.name}: the index gives {sdist['filename']} sha256 "
                f"{sdist['sha256']}, the config pins {source['sha256']} — the pin or the "
                "index is wrong; nothing was fetched"
            )
        try:
            prefetch.fetch_url(sdist["url"], dest, source["sha256"])
        except prefetch.PrefetchError as error:
            raise KernelError(f"kernel {kernel.name}: {error}") from error
        origin = {
            "pypi": source["pypi"],
            "version": source["version"],
            "url": _redact(sdist["url"]),
        }
    else:
        try:
            prefetch.fetch_url(source["url"], dest, source["sha256"])
        except prefetch.PrefetchError as error:
            raise KernelError(f"kernel {kernel.name}: {error}") from error
        origin = {"url": _redact(source["url"])}
    return {"kernel": kernel.name, "sha256": files.sha256_file(dest), **origin}
