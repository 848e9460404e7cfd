"""A tiny fake Hugging Face Hub, served over HTTP on 127.0.0.1, for offline tests.

It implements exactly the endpoints that ``huggingface_hub.snapshot_download`` (2.4.0) uses,
for model and dataset repos, at one commit:

* ``GET  /api/{models,datasets}/{repo_id}[/revision/{rev}]``  -- repo_info / model_info /
  dataset_info (only called when the revision is not a commit sha)
* ``GET  /api/{models,datasets}/{repo_id}/tree/{rev}[/{path}]?recursive=..`` -- list_repo_tree
* ``HEAD|GET /{repo_id}/resolve/{rev}/{path}`` and ``/datasets/{repo_id}/resolve/...``
  -- get_hf_file_metadata and the download itself
* ``GET  /cdn/{sha256}`` on the host ``localhost`` -- where "LFS" files are redirected to,
  like the real Hub redirects large files to a CDN on another host

The headers follow the real Hub: ``X-Repo-Commit`` on every resolve response; small files
answer ``200`` with ``ETag: "<git blob sha1>"`` and ``Content-Length``; LFS files answer
``302`` with ``Location`` (another origin, so the client drops the Authorization header),
``X-Linked-Etag: "<sha256>"`` and ``X-Linked-Size``. No ``X-Xet-*`` headers and no
``xetHash`` in tree entries are ever sent, so the client never tries Xet storage. Errors
carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) so that
``hf_raise_for_status`` maps them to the right exception.

It also takes uploads the way ``HfApi.create_repo`` + ``HfApi.create_commit`` (2.4.0) send
them, so a publish can be tested against it:

* ``POST /api/repos/create`` -- a new repo (holding ``.gitattributes``, as on the Hub) with
  its visibility; ``409`` when it exists
* ``POST /api/validate-yaml`` -- the README's front matter must be a YAML mapping
* ``POST /api/{models,datasets}/{repo_id}/preupload/{rev}`` -- answers ``"regular"`` for
  every file, so the client sends each file's bytes inline in the commit: no LFS batch
  API, no Xet (the client would ask for those only for files marked ``"lfs"``)
* ``POST /api/{models,datasets}/{repo_id}/commit/{rev}`` -- the ndjson commit (``header``,
  ``file`` base64, ``deletedFile``, ``deletedFolder``); a ``lfsFile`` line is refused
  since no file was ever marked ``"lfs"``

Each commit moves that repo to a new commit id; every request is recorded with its method,
path, headers and body (:attr:`FakeHub.requests`), each commit parsed
(:attr:`FakeHub.commits`).

``huggingface_hub`` reads ``HF_ENDPOINT`` once, at import time (``constants.ENDPOINT`` and
``constants.HUGGINGFACE_CO_URL_TEMPLATE``), so the honest way to point it at this server is
a subprocess started with ``HF_ENDPOINT=hub.url`` in its environment (see :meth:`FakeHub.env`).

Usage::

    with FakeHub({"org/tiny": {"config.json": b"{}"}, "datasets/org/data": tmp_dir}) as hub:
        hub.url, hub.commit, hub.requests
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

LFS_POINTER_SIZE = 134  # not checked by the client; about what the real Hub reports


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content (what the Hub calls a file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores instead of an LFS file's content."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


@dataclass
class Request:
    """One request the fake hub received."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class _Repo:
    repo_type: str  # "model" | "dataset"
    repo_id: str
    files: dict[str, bytes] = field(default_factory=dict)
    commit: str | None = None  # set once the repo was created or committed to over HTTP
    private: bool | None = None  # as asked at creation over HTTP


def _split_key(key: str) -> tuple[str, str]:
    """``"datasets/org/name"`` -> ``("dataset", "org/name")``; ``"org/name"`` -> model."""
    if key.startswith("datasets/"):
        return "dataset", key[len("datasets/") :]
    return "model", key


def _read_dir(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


class FakeHub:
    """Serve repos of files as a Hugging Face Hub at one pinned commit.

    ``repos`` maps a repo id to its files: either a mapping ``{path_in_repo: bytes}`` or a
    local directory. Prefix the id with ``datasets/`` for a dataset repo (as in Hub URLs).
    Files of ``lfs_threshold`` bytes or more are served like LFS files (redirect to a "CDN").
    With ``token`` set, every Hub (non-CDN) request must carry ``Authorization: Bearer
    <token>``, otherwise it gets a 401 as for a private repo.
    """

    def __init__(
        self,
        repos: Mapping[str, Mapping[str, bytes] | Path | str],
        *,
        token: str | None = None,
        lfs_threshold: int = 1024,
        branch: str = "main",
    ) -> None:
        self._repos: dict[tuple[str, str], _Repo] = {}
        for key, content in repos.items():
            repo_type, repo_id = _split_key(key)
            files = (
                _read_dir(Path(content))
                if isinstance(content, str | os.PathLike)
                else {k: bytes(v) for k, v in content.items()}
            )
            self._repos[(repo_type, repo_id)] = _Repo(repo_type, repo_id, files)
        digest = hashlib.sha1()
        for (repo_type, repo_id), repo in sorted(self._repos.items()):
            digest.update(f"{repo_type}/{repo_id}\0".encode())
            for path, data in sorted(repo.files.items()):
                digest.update(path.encode() + b"\0" + git_blob_sha1(data).encode())
        self.commit: str = digest.hexdigest()
        self.branch = branch
        self.token = token
        self.lfs_threshold = lfs_threshold
        self.requests: list[Request] = []
        self.commits: list[dict] = []  # parsed commits: repo_id, summary, added, deleted
        self._tampered: dict[tuple[str, str, str], bytes] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._port: int | None = None  # kept after stop(), to test an unreachable hub
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._port is not None, "FakeHub was never started"
        return self._port

    @property
    def url(self) -> str:
        """The endpoint to put in ``HF_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        """Same server, other origin: the client treats it as a foreign CDN host."""
        return f"http://localhost:{self.port}"

    def start(self) -> FakeHub:
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fakehub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def env(self) -> dict[str, str]:
        """Environment variables that point ``huggingface_hub`` at this server."""
        return {
            "HF_ENDPOINT": self.url,
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }

    # -- data ------------------------------------------------------------------------------

    def tamper(self, repo: str, path: str, data: bytes) -> None:
        """Serve ``data`` for a (non-LFS) file while listings still describe the original,
        like a corrupted transfer or a mirror that is out of sync."""
        repo_type, repo_id = _split_key(repo)
        self._tampered[(repo_type, repo_id, path)] = data

    def files_of(self, repo: str) -> dict[str, bytes]:
        """The files a repo holds now (``datasets/`` prefix for a dataset repo)."""
        repo_type, repo_id = _split_key(repo)
        with self._lock:
            return dict(self._repos[(repo_type, repo_id)].files)

    def repo(self, repo: str) -> _Repo | None:
        with self._lock:
            return self._repos.get(_split_key(repo))

    def is_lfs(self, data: bytes) -> bool:
        return len(data) >= self.lfs_threshold

    def requests_to(self, fragment: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if fragment in r.path]

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _blob_by_sha256(self, sha256: str) -> bytes | None:
        for repo in self._repos.values():
            for data in repo.files.values():
                if hashlib.sha256(data).hexdigest() == sha256:
                    return data
        return None

    def _tree_entries(self, repo: _Repo, prefix: str, recursive: bool) -> list[dict]:
        prefix = prefix.strip("/")
        base = f"{prefix}/" if prefix else ""
        files: list[dict] = []
        folders: dict[str, None] = {}
        for path, data in sorted(repo.files.items()):
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            parts = rest.split("/")
            # every intermediate folder is listed (recursive) or only the first level
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.setdefault(base + "/".join(parts[:depth]))
            if not recursive and len(parts) > 1:
                continue
            entry: dict = {"type": "file", "path": path, "size": len(data)}
            if self.is_lfs(data):
                sha256 = hashlib.sha256(data).hexdigest()
                entry["oid"] = git_blob_sha1(lfs_pointer(sha256, len(data)))
                entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": LFS_POINTER_SIZE}
            else:
                entry["oid"] = git_blob_sha1(data)
            files.append(entry)
        dirs = [
            {"type": "directory", "path": p, "size": 0, "oid": hashlib.sha1(p.encode()).hexdigest()}
            for p in folders
        ]
        return dirs + files


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence stderr
        pass

    # -- plumbing --------------------------------------------------------------------------

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: object, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, status: int, code: str, message: str, **headers: str) -> None:
        self._json(
            status,
            {"error": message},
            {"X-Error-Code": code, "X-Error-Message": message, **headers},
        )

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = parse_qs(split.query)
        body = self._read_body() if self.command == "POST" else b""
        hub._record(
            Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        host = (self.headers.get("Host") or "").split(":")[0]

        if path.startswith("/cdn/"):
            return self._serve_cdn(path[len("/cdn/") :], host)
        if host != "127.0.0.1":
            return self._error(404, "EntryNotFound", f"unknown host {host!r}")
        if hub.token is not None and self.headers.get("Authorization") != f"Bearer {hub.token}":
            # what the real Hub answers for a private repo without a (valid) token
            return self._error(401, "RepoNotFound", "Repository not found or token missing")
        if self.command == "POST":
            return self._serve_post(path, body)
        if path.startswith("/api/"):
            return self._serve_api(path[len("/api/") :], query)
        return self._serve_resolve(path.lstrip("/"))

    def _find_repo(self, repo_type: str, rest: str) -> tuple[_Repo, str] | None:
        """Match the longest ``namespace/name`` (or bare ``name``) prefix of ``rest``."""
        parts = rest.split("/")
        for n in (2, 1):
            repo = self.hub._repos.get((repo_type, "/".join(parts[:n])))
            if repo is not None:
                return repo, "/".join(parts[n:])
        return None

    def _check_revision(self, revision: str, repo: _Repo | None = None) -> bool:
        if revision in (self.hub.commit, self.hub.branch) or (
            repo is not None and repo.commit is not None and revision == repo.commit
        ):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return False

    # -- endpoints -------------------------------------------------------------------------

    def _serve_api(self, rest: str, query: dict[str, list[str]]) -> None:
        kind, _, rest = rest.partition("/")
        repo_type = {"models": "model", "datasets": "dataset"}.get(kind)
        found = self._find_repo(repo_type, rest) if repo_type else None
        if found is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        repo, rest = found
        op, _, rest = rest.partition("/")
        if op in ("", "revision"):  # repo_info / model_info / dataset_info
            revision = rest or self.hub.branch
            if not self._check_revision(revision, repo):
                return None
            return self._json(
                200,
                {
                    "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                    "id": repo.repo_id,
                    "sha": repo.commit or self.hub.commit,
                    "private": repo.private
                    if repo.private is not None
                    else self.hub.token is not None,
                    "gated": False,
                    "disabled": False,
                    "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                },
            )
        if op == "tree":  # list_repo_tree
            revision, _, in_repo = rest.partition("/")
            if not self._check_revision(revision, repo):
                return None
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = self.hub._tree_entries(repo, in_repo, recursive)
            if in_repo and not entries:
                return self._error(404, "EntryNotFound", f"{in_repo} does not exist")
            return self._json(200, entries)
        return self._error(404, "EntryNotFound", f"endpoint {op!r} not implemented by FakeHub")

    def _serve_resolve(self, rest: str) -> None:
        repo_type = "model"
        if rest.startswith("datasets/"):
            repo_type, rest = "dataset", rest[len("datasets/") :]
        found = None
        for n in (2, 1):
            parts = rest.split("/")
            if len(parts) > n + 2 and parts[n] == "resolve":
                found = self.hub._repos.get((repo_type, "/".join(parts[:n])))
                if found is not None:
                    revision, filename = parts[n + 1], "/".join(parts[n + 2 :])
                    break
        if found is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if not self._check_revision(revision):
            return None
        commit = {"X-Repo-Commit": self.hub.commit}
        data = found.files.get(filename)
        if data is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist", **commit)
        if self.hub.is_lfs(data):
            sha256 = hashlib.sha256(data).hexdigest()
            location = f"{self.hub.cdn_url}/cdn/{sha256}?filename={quote(filename)}"
            return self._send(
                302,
                b"",
                {
                    **commit,
                    "Location": location,
                    "ETag": f'"{git_blob_sha1(lfs_pointer(sha256, len(data)))}"',
                    "X-Linked-Etag": f'"{sha256}"',
                    "X-Linked-Size": str(len(data)),
                },
                content_type="text/plain",
            )
        served = self.hub._tampered.get((found.repo_type, found.repo_id, filename), data)
        return self._send_bytes(served, {**commit, "ETag": f'"{git_blob_sha1(data)}"'})

    def _serve_cdn(self, sha256: str, host: str) -> None:
        data = self.hub._blob_by_sha256(sha256)
        if data is None or host != "localhost":
            return self._send(404, b"NoSuchKey", content_type="text/plain")
        return self._send_bytes(data, {"ETag": f'"{sha256}"'})

    def _send_bytes(self, data: bytes, headers: dict[str, str]) -> None:
        """200 with the whole file, or 206 for ``Range: bytes=N-[M]`` (used to resume)."""
        status, body = 200, data
        headers = {**headers, "Accept-Ranges": "bytes"}
        range_header = self.headers.get("Range", "")
        if range_header.startswith("bytes=") and "," not in range_header:
            start_s, _, end_s = range_header[len("bytes=") :].partition("-")
            if start_s.isdigit():
                start = int(start_s)
                end = int(end_s) if end_s.isdigit() else len(data) - 1
                if start >= len(data):
                    return self._send(
                        416, b"", {"Content-Range": f"bytes */{len(data)}"}, "text/plain"
                    )
                status, body = 206, data[start : end + 1]
                headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        return self._send(status, body, headers, content_type="application/octet-stream")

    # -- uploads ---------------------------------------------------------------------------

    def _serve_post(self, path: str, body: bytes) -> None:
        if path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        kind, _, rest = path.removeprefix("/api/").partition("/")
        repo_type = {"models": "model", "datasets": "dataset"}.get(kind)
        found = self._find_repo(repo_type, rest) if path.startswith("/api/") and repo_type else None
        if found is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        repo, rest = found
        op, _, revision = rest.partition("/")
        if revision != self.hub.branch:  # uploads go to the branch (no PRs, no other refs)
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if op == "preupload":
            return self._preupload(repo, json.loads(body))
        if op == "commit":
            return self._commit(repo, body)
        return self._error(404, "EntryNotFound", f"endpoint {op!r} not implemented by FakeHub")

    def _create_repo(self, payload: dict) -> None:
        repo_type = payload.get("type") or "model"
        if not payload.get("organization"):
            return self._json(400, {"error": "FakeHub needs an explicit organization"})
        repo_id = f"{payload['organization']}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub._repos:
                return self._json(409, {"error": "You already created this repo", "url": url})
            files = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"}
            repo = _Repo(repo_type, repo_id, files, private=payload.get("visibility") == "private")
            repo.commit = hashlib.sha1(f"create {repo_type}/{repo_id}".encode()).hexdigest()
            self.hub._repos[(repo_type, repo_id)] = repo
        return self._json(200, {"url": url, "name": repo_id})

    def _validate_yaml(self, payload: dict) -> None:
        content = payload.get("content", "")
        if content.startswith("---\n"):
            front, sep, _ = content[4:].partition("\n---")
            try:
                meta = yaml.safe_load(front) if sep else None
            except yaml.YAMLError as error:
                meta = error
            if not isinstance(meta, dict):
                message = f"invalid metadata: {meta!r}"
                return self._json(
                    400, {"errors": [{"message": message}]}, {"X-Error-Message": message}
                )
        return self._json(200, {"errors": [], "warnings": []})

    def _preupload(self, repo: _Repo, payload: dict) -> None:
        files = [
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_sha1(repo.files[f["path"]]) if f["path"] in repo.files else None,
            }
            for f in payload["files"]
        ]
        return self._json(200, {"files": files, "commitOid": repo.commit or self.hub.commit})

    def _commit(self, repo: _Repo, body: bytes) -> None:
        if not body.endswith(b"\n"):
            return self._json(400, {"error": "a commit is ndjson: one JSON object per line"})
        lines = [json.loads(line) for line in body.split(b"\n") if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return self._json(400, {"error": "the first line of a commit is its header"})
        header, added, deleted = lines[0]["value"], {}, []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file" and value.get("encoding") == "base64":
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append((key, value["path"]))
            else:  # e.g. lfsFile: no file was ever marked for LFS
                return self._json(422, {"error": f"unexpected commit line {key!r}"})
        with self.hub._lock:
            for key, target in deleted:
                gone = [
                    p
                    for p in repo.files
                    if p == target
                    or (key == "deletedFolder" and p.startswith(target.rstrip("/") + "/"))
                ]
                if not gone:
                    message = f"A file with this name doesn't exist: {target}"
                    return self._error(404, "EntryNotFound", message)
                for p in gone:
                    del repo.files[p]
            repo.files.update(added)
            repo.commit = hashlib.sha1((repo.commit or "").encode() + body).hexdigest()
            self.hub.commits.append(
                {
                    "repo_id": repo.repo_id,
                    "repo_type": repo.repo_type,
                    "summary": header.get("summary"),
                    "description": header.get("description"),
                    "added": added,
                    "deleted": [p for _k, p in deleted],
                    "oid": repo.commit,
                }
            )
            oid = repo.commit
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        return self._json(
            200,
            {
                "success": True,
                "commitOid": oid,
                "commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{oid}",
                "hookOutput": "",
                "pullRequestUrl": None,
            },
        )
