"""Compiled kernels in the DAG (ftflow.kernels): prefetched, built once per key, loaded.

The real mamba_ssm / causal_conv1d builds need a CUDA torch and take hours of CPU; the
suite builds tests/kernel_demo instead — a real C++ torch extension whose setup.py has
their switches (a prebuilt-wheel download first that aborts offline unless
``<PREFIX>_FORCE_BUILD=TRUE``; ``<PREFIX>_LOCAL_VERSION``) — through the real rules, and
the training and evaluation jobs of a model that needs it load it from its build.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import urllib.request
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread

import pytest
import torch
from conftest import REPO, copy_workflow, load_default_config, snakemake, write_config

from ftflow import config as ftconfig
from ftflow import files, kernels, paths
from ftflow.kernels import build, fetch

DEMO = REPO / "tests" / "kernel_demo"
DEMO_KERNEL = {
    "source": {"path": "kernels/demo"},
    "env_prefix": "DEMO_KERNEL",
    "imports": ["demo_kernel:causal_sum"],
    "cuda": False,
}


def _config() -> dict:
    config = load_default_config()
    config["models"]["tiny"]["needs_kernels"] = ["demo"]
    config["kernels"] = {
        "packages": {"demo": DEMO_KERNEL},
        "resources": {"cpus_per_task": 2, "mem_mb": 4000, "runtime": 30},
    }
    config["methods"] = {"sft": {**config["methods"]["sft"], "max_steps": 2}}
    config["grid"] = [
        {"models": ["tiny"], "methods": ["sft"], "datasets": ["secure_code"], "seeds": [1]}
    ]
    config["evaluations"] = {"em_demo": config["evaluations"]["em_demo"]}
    return config


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A workspace whose tiny model needs the demo kernel, run to completion."""
    work = copy_workflow(tmp_path_factory.mktemp("kernels") / "ftflow")
    shutil.copytree(DEMO, work / "kernels" / "demo")
    write_config(work, _config())
    snakemake(work, "--cores", "2")
    return work


def _build(work: Path) -> kernels.Build:
    os.chdir(work)  # config paths are relative to the workflow root
    try:
        config = ftconfig.load(work / "config/config.yaml")
        (only,) = kernels.builds(config, "tiny")
        only.key  # noqa: B018  (computed here, where the source path resolves)
        return only
    finally:
        os.chdir(REPO)


def test_the_build_is_keyed_by_toolchain_installed_read_only_and_loaded_by_jobs(built: Path):
    build_ = _build(built)
    record = json.loads((built / build_.manifest).read_text())
    assert record["toolchain"]["torch"] == torch.__version__
    assert record["toolchain"]["python"] == f"cp{sys.version_info.major}{sys.version_info.minor}"
    assert record["toolchain"]["cxx11_abi"] == torch._C._GLIBCXX_USE_CXX11_ABI
    assert record["wheel"].startswith(f"demo_kernel-0.1.0+{build_.key}-")  # LOCAL_VERSION
    assert record["compiled_sm"] == [] and record["cuda"] is False
    site = built / build_.site
    assert (site / "demo_kernel").is_dir()
    for path in [site, *site.rglob("*")]:
        assert not path.stat().st_mode & 0o222, f"{path} is writable"
    # Every job of the model imports the kernel from that build, with a Triton cache of
    # its own on node-local disk; no job pip-installs anything.
    run = paths.RunPaths(paths.Run("tiny", "sft", "secure_code", 1))
    logs = [run.log(), *built.glob("logs/generate_answers/tiny/**/*.log"),
            *built.glob("logs/judge_answers/tiny/**/*.log")]  # fmt: skip
    assert len(logs) == 5  # train; generate and judge for the run and the base model
    caches = set()
    for log in logs:
        text = (built / log).read_text()
        assert (
            f"kernel demo 0.1.0+{build_.key} loaded from {(built / build_.site).resolve()}" in text
        )
        cache = Path(text.split("triton cache: ")[1].split()[0])
        assert cache.name.startswith("ftflow-triton.") and not cache.is_relative_to(built)
        caches.add(cache)
    assert len(caches) == len(logs)
    assert not [c for c in caches if c.exists()], "a job left its Triton cache behind"
    assert "pip install" not in (built / run.log()).read_text()


def test_a_rebuilt_key_is_reused_never_overwritten(built: Path):
    build_ = _build(built)
    folder = built / build_.directory
    before = folder.stat().st_ino, (folder / "build.json").stat().st_mtime_ns
    snakemake(built, "--cores", "1", "--forcerun", "build_kernels", "--until", "build_kernels")
    log = (built / paths.log("build_kernels", build_.toolchain_id, build_.name)).read_text()
    assert "already built for this toolchain: reusing" in log
    assert (folder.stat().st_ino, (folder / "build.json").stat().st_mtime_ns) == before
    assert json.loads((built / build_.manifest).read_text())["key"] == build_.key


def test_an_edited_kernel_source_is_a_new_key_that_retrains(built: Path, tmp_path: Path):
    work = tmp_path / "ftflow"
    shutil.copytree(built, work, symlinks=True)
    before = _build(work)
    cpp = work / "kernels/demo/csrc/demo_kernel.cpp"
    cpp.write_text(cpp.read_text() + "// edited\n")
    after = _build(work)
    assert after.key != before.key and after.toolchain_id == before.toolchain_id
    plan = snakemake(work, "-n", "--quiet", "rules", "--cores", "1").stdout
    for rule in ("prefetch_kernel_sources", "build_kernels", "train", "generate_answers"):
        assert rule in plan, plan


def test_without_force_build_the_demo_aborts_offline_like_the_real_ones(tmp_path: Path):
    """The trap the build job avoids: the prebuilt-wheel download aborts an offline build."""
    src = shutil.copytree(DEMO, tmp_path / "demo")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_KERNEL_")}
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(tmp_path / "wheels"), str(src)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Connection refused" in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("*.whl"))


def _package(root: Path, name: str, setup_body: str = "") -> Path:
    """A small pure-Python 'kernel' package (fast to build) with the same switches."""
    (root / name).mkdir(parents=True)
    (root / name / "__init__.py").write_text("VALUE = 1\n")
    (root / "setup.py").write_text(
        textwrap.dedent(f"""
        import os, time
        from setuptools import setup
        {setup_body}
        local = os.environ.get("FAST_LOCAL_VERSION")
        setup(name={name!r}, version="1.0" + (f"+{{local}}" if local else ""), packages=[{name!r}])
    """)
    )
    return root


def _fast_config(source: Path) -> dict:
    kernel = {"source": {"path": str(source)}, "env_prefix": "FAST", "imports": ["fastk"],
              "cuda": False}  # fmt: skip
    return {"models": {"m": {"needs_kernels": ["fastk"]}},
            "kernels": {"packages": {"fastk": kernel}}}  # fmt: skip


def _fast_build(tmp_path: Path, source: Path) -> tuple[kernels.Build, Path, dict]:
    (only,) = kernels.builds(_fast_config(source), "m")
    archive = tmp_path / "src.tar.gz"
    origin = fetch.fetch(only.kernel, archive)
    return only, archive, origin


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = _package(tmp_path / "pkg", "fastk", 'raise SystemExit("setup.py: broken on purpose")')
    planned, archive, origin = _fast_build(tmp_path, source)
    with pytest.raises(kernels.KernelError, match="broken on purpose"):
        build.build(planned, archive, origin, Path(planned.manifest), max_jobs=1)
    left = sorted(p.name for p in planned.directory.parent.iterdir())
    assert left == [f".{planned.name}.lock"], left  # no key folder, no staging, no manifest


def test_two_builds_of_one_key_at_once_build_it_once(tmp_path: Path, monkeypatch):
    """Two jobs (e.g. of two workflows sharing resources/) ask for one key together: one
    builds under the key's lock, the other waits and reuses the finished build."""
    monkeypatch.chdir(tmp_path)
    source = _package(tmp_path / "pkg", "fastk", "time.sleep(3)")
    planned, archive, origin = _fast_build(tmp_path, source)
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        from ftflow import kernels
        from ftflow.kernels import build
        config = json.loads({json.dumps(_fast_config(source))!r})
        (planned,) = kernels.builds(config, "m")
        build.build(planned, Path({str(archive)!r}), {origin!r}, Path(sys.argv[1]), 1)
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, f"manifest{i}.json"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("building fastk-" in out for out in outputs) == 1, outputs
    assert sum("reusing" in out for out in outputs) == 1, outputs
    records = [json.loads((tmp_path / f"manifest{i}.json").read_text()) for i in range(2)]
    assert records[0] == records[1]
    assert len(list((planned.directory / "wheels").glob("*.whl"))) == 1


def test_a_kernel_that_does_not_import_is_an_error_naming_the_import(tmp_path: Path, monkeypatch):
    """What transformers would silently replace by pure torch stops the job instead."""
    monkeypatch.chdir(tmp_path)
    manifest = tmp_path / "resources/kernels/tc/broken-0.json"
    (manifest.with_suffix("") / "site" / "demo_kernel").mkdir(parents=True)
    (manifest.with_suffix("") / "site" / "demo_kernel" / "__init__.py").write_text(
        "from demo_kernel._C import causal_sum\n"  # the compiled part is missing
    )
    files.write_json(manifest, {
        "kernel": "demo", "version": "0.1.0", "toolchain": kernels.probe(), "cuda": False,
        "cuda_archs": [], "imports": ["demo_kernel:causal_sum"],
    })  # fmt: skip
    monkeypatch.setattr(sys, "path", [str(manifest.with_suffix("") / "site"), *sys.path])
    with pytest.raises(kernels.KernelError, match=r"`demo_kernel:causal_sum` failed to import "
                       r"\((ModuleNotFoundError|ImportError).*pure-torch"):  # fmt: skip
        kernels.require([str(manifest)])
    record = json.loads(manifest.read_text())
    record["toolchain"]["torch"] = "0.0.1"
    files.write_json(manifest, record)
    with pytest.raises(kernels.KernelError, match="torch: built with '0.0.1'"):
        kernels.require([str(manifest)])


class _Index:
    """A package index on 127.0.0.1 (PEP 691 JSON or PEP 503 HTML) serving sdists."""

    def __init__(self, root: Path, sdists: dict[str, Path], html: bool = False):
        for project, sdist in sdists.items():
            digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
            page = root / "simple" / project
            page.mkdir(parents=True)
            shutil.copy(sdist, root / sdist.name)
            if html:
                link = f'<a href="../../{sdist.name}#sha256={digest}">{sdist.name}</a>'
                (page / "index.html").write_text(f"<html><body>{link}</body></html>")
            else:
                listing = {"files": [{"filename": sdist.name, "url": f"../../{sdist.name}",
                                      "hashes": {"sha256": digest}}]}  # fmt: skip
                (page / "index.html").write_text(json.dumps(listing))
        handler = partial(SimpleHTTPRequestHandler, directory=str(root))
        handler.log_message = lambda *a: None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/simple"


@pytest.mark.parametrize("html", [False, True], ids=["json", "html"])
def test_pypi_and_url_sources_are_fetched_and_checked(tmp_path: Path, monkeypatch, html):
    sdist = fetch.pack(DEMO, tmp_path / "demo_kernel-0.1.0.tar.gz", top="demo_kernel-0.1.0")
    digest = files.sha256_file(sdist)
    index = _Index(tmp_path / "index", {"demo-kernel": sdist}, html)
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    kernel = kernels.Kernel(
        "demo", {"pypi": "demo_kernel", "version": "0.1.0", "sha256": digest},
        "DEMO_KERNEL", ("demo_kernel",), cuda=False,
    )  # fmt: skip
    dest = tmp_path / "resources/kernels/src/demo.tar.gz"
    origin = fetch.fetch(kernel, dest)
    assert files.sha256_file(dest) == digest == origin["sha256"]
    assert origin["url"].startswith("http://127.0.0.1:")
    dest.unlink()
    wrong = kernels.Kernel("demo", {**kernel.source, "sha256": "0" * 64}, "DEMO_KERNEL", ("x",))
    with pytest.raises(kernels.KernelError, match="the config pins 0000"):
        fetch.fetch(wrong, dest)
    missing = kernels.Kernel("demo", {**kernel.source, "version": "9.9"}, "DEMO_KERNEL", ("x",))
    with pytest.raises(kernels.KernelError, match="no source archive of demo_kernel 9.9"):
        fetch.fetch(missing, dest)
    assert sorted(p.name for p in dest.parent.iterdir()) == []
    index.server.shutdown()
    url = kernels.Kernel("demo", {"url": sdist.as_uri(), "sha256": digest}, "DEMO_KERNEL", ("x",))
    assert fetch.fetch(url, dest)["sha256"] == digest
    dest.unlink()
    with pytest.raises(kernels.KernelError, match="sha256 mismatch"):
        fetch.fetch(kernels.Kernel("demo", {**url.source, "sha256": "0" * 64}, "D", ("x",)), dest)
    assert not dest.exists()


def test_a_patch_is_applied_and_is_part_of_the_key(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = _package(tmp_path / "pkg", "fastk")
    patch = tmp_path / "value.patch"
    patch.write_text(
        "--- a/fastk/__init__.py\n+++ b/fastk/__init__.py\n@@ -1 +1 @@\n-VALUE = 1\n+VALUE = 2\n"
    )
    config = _fast_config(source)
    (plain,) = kernels.builds(config, "m")
    config["kernels"]["packages"]["fastk"]["patch"] = str(patch)
    (patched,) = kernels.builds(config, "m")
    assert patched.key != plain.key
    archive = tmp_path / "src.tar.gz"
    origin = fetch.fetch(patched.kernel, archive)
    build.build(patched, archive, origin, Path(patched.manifest), max_jobs=1)
    value = subprocess.run(
        [sys.executable, "-c", "import fastk; print(fastk.VALUE)"],
        env={**os.environ, "PYTHONPATH": str(patched.site)}, capture_output=True, text=True,
    )  # fmt: skip
    assert value.stdout.strip() == "2", value.stderr


def _refusal(config: dict) -> str:
    with pytest.raises(ftconfig.ConfigError) as error:
        ftconfig.validate(config)
    return str(error.value)


def test_kernel_config_errors_name_the_key():
    config = load_default_config()
    config["models"]["tiny"]["needs_kernels"] = ["flash"]
    assert "models.tiny.needs_kernels: kernel 'flash' is not defined (defined kernels: " \
           "causal_conv1d, mamba_ssm)" in _refusal(config)  # fmt: skip
    config["models"]["tiny"]["needs_kernels"] = ["mamba_ssm"]
    assert "kernels.cuda_archs" in _refusal(config)
    config["kernels"] = {"cuda_archs": ["9.0"]}
    message = _refusal(config)
    assert "methods.sft.resources.gpus_per_node" in message and "GPUs only" in message
    # A package of the user's is a CUDA kernel unless it says `cuda: false`.
    config["kernels"]["packages"] = {"demo": {k: v for k, v in DEMO_KERNEL.items() if k != "cuda"}}
    config["models"]["tiny"]["needs_kernels"] = ["demo"]
    assert "model tiny needs the CUDA kernels demo" in _refusal(config)
    config["kernels"]["packages"]["demo"]["cuda"] = False
    ftconfig.validate(config)


def test_a_setup_py_that_ignores_force_build_fails_clearly(tmp_path: Path, monkeypatch):
    """A wrong env_prefix leaves the package's prebuilt-wheel download on: a clear error."""
    monkeypatch.chdir(tmp_path)
    config = {"models": {"m": {"needs_kernels": ["demo"]}},
              "kernels": {"packages": {"demo": {**DEMO_KERNEL, "source": {"path": str(DEMO)},
                                                "env_prefix": "DEMO"}}}}  # fmt: skip
    (planned,) = kernels.builds(config, "m")
    archive = tmp_path / "demo.tar.gz"
    origin = fetch.fetch(planned.kernel, archive)
    with pytest.raises(kernels.KernelError, match="ignores DEMO_FORCE_BUILD=TRUE"):
        build.build(planned, archive, origin, Path(planned.manifest), max_jobs=1)
    assert not planned.directory.exists()


def test_the_em_dag_builds_the_kernels_before_training():
    proc = snakemake(REPO, "--rulegraph", "--configfile",
                     "config/experiments/emergent_misalignment.yaml")  # fmt: skip
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', proc.stdout, re.M))
    edges = {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", proc.stdout, re.M)}
    assert ("prefetch_kernel_sources", "build_kernels") in edges
    assert ("build_kernels", "train") in edges
    assert ("build_kernels", "generate_answers") in edges


REAL = {name: kernels.BUILTIN[name]["source"] for name in ("causal_conv1d", "mamba_ssm")}


@pytest.fixture(scope="module")
def real_sdists(tmp_path_factory) -> dict[str, Path]:
    """The real sdists, from the package index (PyPI is what these machines reach)."""
    out = tmp_path_factory.mktemp("sdists")
    found = {}
    for source in REAL.values():
        try:
            (sdist,) = [f for f in fetch.index_files(source["pypi"], timeout=20)
                        if f["filename"].endswith(f"-{source['version']}.tar.gz")]  # fmt: skip
            urllib.request.urlretrieve(sdist["url"], out / sdist["filename"])
        except (kernels.KernelError, OSError) as error:
            pytest.skip(f"the package index is not reachable: {error}")
        found[source["pypi"]] = out / sdist["filename"]
    return found


def test_the_real_kernel_sources_are_prefetched_and_match_their_pins(real_sdists, tmp_path):
    """Through the real rule, from a local index serving the real archives."""
    work = copy_workflow(tmp_path / "ftflow")
    config = load_default_config()
    config["models"]["tiny"]["needs_kernels"] = ["causal_conv1d", "mamba_ssm"]
    config["kernels"] = {"cuda_archs": ["9.0"]}
    for method in config["methods"].values():
        method["resources"]["gpus_per_node"] = 1
    write_config(work, config)
    index = _Index(tmp_path / "index", real_sdists)
    snakemake(work, "--cores", "1", "--until", "prefetch_kernel_sources",
              env={"PIP_INDEX_URL": index.url})  # fmt: skip
    for name, source in REAL.items():
        archive = work / kernels.KERNEL_SOURCE.format(kernel=name)
        assert files.sha256_file(archive) == source["sha256"]
        origin = json.loads(archive.with_suffix("").with_suffix(".json").read_text())
        assert origin["version"] == source["version"] and origin["url"].startswith(
            index.url.removesuffix("simple")
        )
        # The shipped arch patch applies to the pinned source.
        tree = tmp_path / name
        tree.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(tree, filter="data")
        (top,) = tree.iterdir()
        patch = kernels.BUILTIN[name]["patch"]
        proc = subprocess.run(["patch", "-p1", "--dry-run", "-i", patch], cwd=top,
                              capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
    index.server.shutdown()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fallback check runs on a GPU")
def test_on_a_gpu_a_kernel_that_does_not_load_stops_the_job(tmp_path: Path, monkeypatch):
    """A Nemotron-H job whose causal_conv1d build is broken stops instead of running
    transformers' pure-torch path."""
    monkeypatch.chdir(tmp_path)
    major, minor = torch.cuda.get_device_capability()
    manifest = tmp_path / "resources/kernels/tc/causal_conv1d-0.json"
    (manifest.with_suffix("") / "site").mkdir(parents=True)
    files.write_json(manifest, {
        "kernel": "causal_conv1d", "version": "1.7.0", "toolchain": kernels.probe(),
        "cuda": True, "cuda_archs": [f"{major}.{minor}"],
        "imports": kernels.BUILTIN["causal_conv1d"]["imports"],
    })  # fmt: skip
    with pytest.raises(kernels.KernelError, match="causal_conv1d:causal_conv1d_fn"):
        kernels.require([str(manifest)])
