"""Tests for ftflow.prefetch, against real local servers (no internet needed).

Hub downloads run ``fetch_hub`` in a subprocess whose environment points ``HF_ENDPOINT`` at
a :class:`fakehub.FakeHub`: huggingface_hub reads that variable at import time, and a fresh
process is exactly how a Snakemake rule on the login node sees it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ftflow.prefetch import MANIFEST_NAME, PrefetchError, copy_local, fetch_hub, fetch_url

sys.path.insert(0, str(Path(__file__).parent))
from fakehub import FakeHub  # noqa: E402

TOKEN = "hf_fakeTOKENthatMustNeverLeak1234567890"

MODEL_FILES = {
    "config.json": b'{"model_type": "llama", "hidden_size": 8}\n',
    "tokenizer.json": b'{"version": "1.0", "model": {"vocab": {}}}\n',
    "model.safetensors": bytes(range(256)) * 20,  # >= lfs_threshold: served via the "CDN"
    "nested/dir/extra.txt": b"nested file\n",
}
DATASET_FILES = {
    "data/train.jsonl": b'{"prompt": "1+1", "completion": "2"}\n' * 3,
    "README.md": b"# tiny dataset\n",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listing(directory: Path) -> list[str]:
    """Everything in a directory, hidden entries included (leftover temporaries show up)."""
    return sorted(p.name for p in directory.iterdir())


def tree_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


# -- local servers ---------------------------------------------------------------------------


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A directory served by ``http.server`` on 127.0.0.1: (directory, base url)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    dataset_dir = tmp_path / "dataset-src"
    for rel, data in DATASET_FILES.items():
        (dataset_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (dataset_dir / rel).write_bytes(data)
    with FakeHub({"org/tiny": MODEL_FILES, "datasets/org/data": dataset_dir}) as fake:
        yield fake


@pytest.fixture
def private_hub() -> Iterator[FakeHub]:
    with FakeHub({"org/private": MODEL_FILES}, token=TOKEN) as fake:
        yield fake


_RUNNER = """
import json, logging, sys
logging.basicConfig(level=logging.DEBUG)
from ftflow.prefetch import PrefetchError, fetch_hub
kwargs = json.loads(sys.argv[1])
try:
    print(fetch_hub(**kwargs))
except PrefetchError as exc:
    print(f"PrefetchError: {exc}", file=sys.stderr)
    sys.exit(3)
"""


def run_fetch_hub(
    hub: FakeHub, tmp_path: Path, *, token: str | None = None, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """``fetch_hub(**kwargs)`` in a fresh interpreter with HF_ENDPOINT set to the fake hub."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGING_FACE_")) and k != "TRANSFORMERS_OFFLINE"
    }
    env.update(hub.env())
    env["HF_HOME"] = str(tmp_path / "hf_home")  # no token file, no shared cache
    if token is not None:
        env["HF_TOKEN"] = token
    kwargs = {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}
    return subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(kwargs)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- fetch_url -------------------------------------------------------------------------------


def test_fetch_url_file_scheme(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # several chunks
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    dest = tmp_path / "out" / "copy.bin"

    assert fetch_url(src.as_uri(), dest, sha256(data)) == dest
    assert dest.read_bytes() == data
    assert listing(dest.parent) == ["copy.bin"]

    # already there with the right digest: nothing is fetched (the source may be gone)
    src.unlink()
    assert fetch_url(src.as_uri(), dest, sha256(data).upper()) == dest
    assert dest.read_bytes() == data


def test_fetch_url_wrong_sha_leaves_nothing(tmp_path: Path) -> None:
    data = b"some data\n"
    src = tmp_path / "src.txt"
    src.write_bytes(data)
    out = tmp_path / "out"
    wrong = "0" * 64

    with pytest.raises(PrefetchError) as info:
        fetch_url(src.as_uri(), out / "x.txt", wrong)
    message = str(info.value)
    assert src.as_uri() in message
    assert wrong in message and sha256(data) in message
    assert listing(out) == []


def test_fetch_url_replaces_stale_dest_and_cleans_on_mismatch(tmp_path: Path) -> None:
    data = b"new content\n"
    src = tmp_path / "src.txt"
    src.write_bytes(data)
    dest = tmp_path / "out" / "x.txt"
    dest.parent.mkdir()
    dest.write_bytes(b"stale")

    assert fetch_url(src.as_uri(), dest, sha256(data)).read_bytes() == data

    dest.write_bytes(b"stale")
    with pytest.raises(PrefetchError):
        fetch_url(src.as_uri(), dest, sha256(b"something else"))
    assert listing(dest.parent) == []  # a wrong file at dest is never left behind


def test_fetch_url_http(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    root, base = http_dir
    data = os.urandom(200_000)
    (root / "weights.bin").write_bytes(data)
    dest = tmp_path / "dl" / "weights.bin"

    fetch_url(f"{base}/weights.bin", dest, sha256(data))
    assert dest.read_bytes() == data
    assert listing(dest.parent) == ["weights.bin"]

    with pytest.raises(PrefetchError) as info:
        fetch_url(f"{base}/missing.bin", tmp_path / "dl" / "missing.bin", sha256(data))
    assert f"{base}/missing.bin" in str(info.value) and "404" in str(info.value)
    assert listing(dest.parent) == ["weights.bin"]


def test_fetch_url_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(PrefetchError, match="64 hex"):
        fetch_url("https://example.org/x", tmp_path / "x", "abc")
    with pytest.raises(PrefetchError, match="only http"):
        fetch_url("ftp://example.org/x", tmp_path / "x", "0" * 64)
    with pytest.raises(PrefetchError, match="could not download"):
        fetch_url((tmp_path / "nope").as_uri(), tmp_path / "x", "0" * 64)
    assert listing(tmp_path) == []


# -- fetch_hub -------------------------------------------------------------------------------


def test_fetch_hub_model_at_pinned_commit(tmp_path: Path, hub: FakeHub) -> None:
    dest = tmp_path / "resources" / "models" / "tiny"
    proc = run_fetch_hub(hub, tmp_path, repo_id="org/tiny", revision=hub.commit, dest=dest)
    assert proc.returncode == 0, proc.stderr

    files = tree_files(dest)
    manifest = json.loads(files.pop(MANIFEST_NAME))
    assert files == MODEL_FILES  # identical content, nested paths kept, no .cache/huggingface
    assert listing(dest.parent) == ["tiny"]  # no temporaries left next to it

    assert manifest["source"] == "huggingface_hub"
    assert manifest["repo_id"] == "org/tiny"
    assert manifest["repo_type"] == "model"
    assert manifest["revision"] == hub.commit
    assert manifest["endpoint"] == hub.url
    assert manifest["verified_against_commit_tree"] is True
    assert manifest["files"] == {
        rel: {"sha256": sha256(data), "size": len(data)} for rel, data in MODEL_FILES.items()
    }

    # pinned: the revision is used as is, never resolved through repo_info
    assert not hub.requests_to("/revision/")
    assert hub.requests_to(f"/api/models/org/tiny/tree/{hub.commit}")
    assert hub.requests_to("/cdn/")  # the LFS file really went through the redirect

    # a second run finds the manifest and does not touch the network
    before = len(hub.requests)
    proc = run_fetch_hub(hub, tmp_path, repo_id="org/tiny", revision=hub.commit, dest=dest)
    assert proc.returncode == 0, proc.stderr
    assert len(hub.requests) == before


@pytest.mark.parametrize("revision", ["main", "v1.0", "a1b2c3d", "refs/pr/1", "g" * 40])
def test_fetch_hub_refuses_unpinned_revision(tmp_path: Path, revision: str) -> None:
    dest = tmp_path / "tiny"
    with pytest.raises(PrefetchError) as info:
        fetch_hub("org/tiny", revision, dest)
    message = str(info.value)
    assert "not pinned" in message and "40-character commit sha" in message
    assert repr(revision) in message and "repo_info" in message
    assert not dest.exists()


def test_fetch_hub_dataset(tmp_path: Path, hub: FakeHub) -> None:
    dest = tmp_path / "resources" / "data" / "tiny"
    proc = run_fetch_hub(
        hub, tmp_path, repo_id="org/data", revision=hub.commit, dest=dest, repo_type="dataset"
    )
    assert proc.returncode == 0, proc.stderr
    files = tree_files(dest)
    manifest = json.loads(files.pop(MANIFEST_NAME))
    assert files == DATASET_FILES
    assert manifest["repo_type"] == "dataset"
    assert hub.requests_to(f"/api/datasets/org/data/tree/{hub.commit}")
    assert hub.requests_to("/datasets/org/data/resolve/")

    # the same id as a model repo does not exist: clear error, nothing left behind
    other = tmp_path / "resources" / "models" / "data"
    proc = run_fetch_hub(hub, tmp_path, repo_id="org/data", revision=hub.commit, dest=other)
    assert proc.returncode == 3, proc.stderr
    assert "PrefetchError" in proc.stderr and "org/data" in proc.stderr
    assert not other.parent.exists() or listing(other.parent) == []


def test_fetch_hub_allow_patterns(tmp_path: Path, hub: FakeHub) -> None:
    dest = tmp_path / "tiny"
    proc = run_fetch_hub(
        hub,
        tmp_path,
        repo_id="org/tiny",
        revision=hub.commit,
        dest=dest,
        allow_patterns=["*.json"],
    )
    assert proc.returncode == 0, proc.stderr
    files = tree_files(dest)
    manifest = json.loads(files.pop(MANIFEST_NAME))
    assert sorted(files) == ["config.json", "tokenizer.json"]
    assert manifest["allow_patterns"] == ["*.json"]

    proc = run_fetch_hub(
        hub,
        tmp_path,
        repo_id="org/tiny",
        revision=hub.commit,
        dest=tmp_path / "none",
        allow_patterns=["*.gguf"],
    )
    assert proc.returncode == 3 and "matched nothing" in proc.stderr
    assert not (tmp_path / "none").exists()


def test_fetch_hub_unknown_commit(tmp_path: Path, hub: FakeHub) -> None:
    dest = tmp_path / "out" / "tiny"
    proc = run_fetch_hub(hub, tmp_path, repo_id="org/tiny", revision="f" * 40, dest=dest)
    assert proc.returncode == 3
    assert "RevisionNotFoundError" in proc.stderr and "f" * 40 in proc.stderr
    assert listing(dest.parent) == []


@pytest.mark.slow  # ~25 s: huggingface_hub retries a refused connection with backoff
def test_fetch_hub_unreachable_hub(tmp_path: Path) -> None:
    # snapshot_download falls back to an existing non-empty local_dir when the Hub cannot be
    # reached; fetch_hub always downloads into a fresh empty one, so this must fail
    hub = FakeHub({"org/tiny": MODEL_FILES}).start()
    hub.stop()
    dest = tmp_path / "out" / "tiny"
    proc = run_fetch_hub(hub, tmp_path, repo_id="org/tiny", revision=hub.commit, dest=dest)
    assert proc.returncode == 3, proc.stderr
    assert "PrefetchError: could not download model org/tiny@" in proc.stderr
    assert listing(dest.parent) == []


def test_fetch_hub_detects_content_that_does_not_match_the_commit(
    tmp_path: Path, hub: FakeHub
) -> None:
    original = MODEL_FILES["config.json"]
    hub.tamper("org/tiny", "config.json", original.replace(b"8", b"9"))  # same size
    dest = tmp_path / "out" / "tiny"
    proc = run_fetch_hub(hub, tmp_path, repo_id="org/tiny", revision=hub.commit, dest=dest)
    assert proc.returncode == 3
    assert "config.json does not match the commit" in proc.stderr
    assert listing(dest.parent) == []


def test_hf_token_is_sent_but_never_stored(tmp_path: Path, private_hub: FakeHub) -> None:
    dest = tmp_path / "resources" / "models" / "private"
    proc = run_fetch_hub(
        private_hub,
        tmp_path,
        token=TOKEN,
        repo_id="org/private",
        revision=private_hub.commit,
        dest=dest,
    )
    assert proc.returncode == 0, proc.stderr
    assert tree_files(dest).keys() - {MANIFEST_NAME} == MODEL_FILES.keys()

    hub_requests = [r for r in private_hub.requests if not r.path.startswith("/cdn/")]
    assert hub_requests
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub_requests)
    # the signed "CDN" URL is another host: the token must not follow the redirect
    cdn_requests = private_hub.requests_to("/cdn/")
    assert cdn_requests and all(r.authorization is None for r in cdn_requests)

    # nowhere on disk (dest, manifest, the HF_HOME used), not in the logs
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in proc.stdout and TOKEN not in proc.stderr


def test_missing_token_fails_cleanly(tmp_path: Path, private_hub: FakeHub) -> None:
    dest = tmp_path / "out" / "private"
    proc = run_fetch_hub(
        private_hub, tmp_path, repo_id="org/private", revision=private_hub.commit, dest=dest
    )
    assert proc.returncode == 3
    assert "PrefetchError: could not download model org/private@" in proc.stderr
    assert listing(dest.parent) == []


# -- copy_local ------------------------------------------------------------------------------


def test_copy_local_file(tmp_path: Path) -> None:
    src = tmp_path / "data.jsonl"
    src.write_bytes(b'{"a": 1}\n')
    dest = tmp_path / "resources" / "data" / "data.jsonl"
    assert copy_local(src, dest) == dest
    assert dest.read_bytes() == src.read_bytes()
    assert listing(dest.parent) == ["data.jsonl"]

    src.write_bytes(b'{"a": 2}\n')  # replaces an older copy
    copy_local(src, dest)
    assert dest.read_bytes() == b'{"a": 2}\n'


def test_copy_local_directory(tmp_path: Path) -> None:
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(b"\x00\x01")
    outside = tmp_path / "outside.txt"
    outside.write_text("followed")
    (src / "link.txt").symlink_to(outside)
    dest = tmp_path / "resources" / "models" / "model"
    dest.mkdir(parents=True)
    (dest / "old-file").write_text("from an earlier copy")

    assert copy_local(src, dest) == dest
    assert tree_files(dest) == {
        "config.json": b"{}",
        "sub/w.bin": b"\x00\x01",
        "link.txt": b"followed",
    }
    assert not (dest / "link.txt").is_symlink()
    assert listing(dest.parent) == ["model"]


def test_copy_local_missing_source(tmp_path: Path) -> None:
    src = tmp_path / "no" / "such" / "file.jsonl"
    dest = tmp_path / "resources" / "file.jsonl"
    with pytest.raises(PrefetchError) as info:
        copy_local(src, dest)
    assert str(src) in str(info.value) and "does not exist" in str(info.value)
    assert not dest.exists()

    with pytest.raises(PrefetchError, match="inside the source"):
        copy_local(tmp_path, tmp_path / "resources" / "copy")
