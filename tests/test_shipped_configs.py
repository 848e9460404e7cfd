"""Every shipped config plans, draws and dry-runs on a fresh clone: no network, no data.

Also: URL sources without a known digest are pinned by their first fetch (ftflow.lock.yaml).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from ftflow import lock, prefetch

CONFIGS = sorted(str(p.relative_to(REPO)) for p in (REPO / "config").rglob("*.yaml"))


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The tracked files only, as a fresh clone has them (no resources/, no results/)."""
    dest = tmp_path_factory.mktemp("clone") / "ftflow"
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for name in filter(None, tracked):
        src = REPO / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet committed
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dest / name)
        else:
            shutil.copy2(src, dest / name)
    return dest


def _run(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "https_proxy": "http://127.0.0.1:9"}
    return subprocess.run(
        ["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.parametrize("configfile", CONFIGS)
def test_plans_draws_and_dry_runs_on_a_fresh_clone(clone: Path, configfile: str):
    assert not (clone / "resources").exists()
    py = sys.executable
    plan = _run(f"{py} -m ftflow.plan --configfile {configfile}", clone)
    assert plan.returncode == 0, plan.stdout[-2000:] + plan.stderr[-3000:]
    assert "GPU-hours" in plan.stdout or "GPU-h" in plan.stdout, plan.stdout[-2000:]
    dag = _run(
        f"set -o pipefail; {py} -m snakemake --dag --configfile {configfile} "
        f"| {py} -m ftflow.dag | dot -Tsvg > dag.svg",
        clone,
    )
    assert dag.returncode == 0, dag.stderr[-3000:]
    assert (clone / "dag.svg").read_text().count('<g id="node') > 3
    dry = _run(f"{py} -m snakemake -n --cores 1 --configfile {configfile}", clone)
    assert dry.returncode == 0, dry.stdout[-2000:] + dry.stderr[-3000:]
    assert "train" in dry.stdout
    assert not (clone / "resources").exists()  # planning fetched nothing


def test_unpinned_url_is_pinned_by_its_first_fetch(tmp_path: Path):
    upstream = tmp_path / "upstream.jsonl"
    upstream.write_text('{"messages": []}\n')
    url = upstream.as_uri()
    lock_file = tmp_path / "ftflow.lock.yaml"
    dest = tmp_path / "resources" / "data.jsonl"

    lock.fetch(url, dest, None, lock_file)
    recorded = yaml.safe_load(lock_file.read_text())["urls"][url]
    assert recorded["size"] == upstream.stat().st_size and len(recorded["sha256"]) == 64

    dest.unlink()  # e.g. a fresh resources/ on another cluster: same bytes, fine
    lock.fetch(url, dest, None, lock_file)
    assert dest.read_text() == upstream.read_text()

    upstream.write_text('{"messages": ["changed upstream"]}\n')
    dest.unlink()
    with pytest.raises(prefetch.PrefetchError, match="upstream file changed"):
        lock.fetch(url, dest, None, lock_file)
    assert not dest.exists()
    assert yaml.safe_load(lock_file.read_text())["urls"][url] == recorded
