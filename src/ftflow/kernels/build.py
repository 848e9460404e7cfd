"""``build_kernels``: compile one kernel for one toolchain, offline, exactly once per key.

What a build does, in order:

1. probes this node's toolchain and refuses to build if it is not the one the key was
   planned with (:func:`ftflow.kernels.probe`), naming each difference;
2. checks the source archive against its pin;
3. takes a lock per key (``fcntl.flock`` on a file beside the key's folder), so two jobs —
   of this workflow or of another one sharing ``resources/`` — never build one key at once;
   a key that is already built is reused, never rebuilt or overwritten;
4. unpacks and patches the source in a temporary folder beside the key's and runs
   ``pip wheel --no-deps --no-build-isolation --no-index`` with ``<PREFIX>_FORCE_BUILD=TRUE``
   (else these setup.py files first try to download a prebuilt wheel, and abort offline),
   ``<PREFIX>_LOCAL_VERSION=<key>`` (the wheel's version says its key), ``MAX_JOBS`` from
   the job's memory and, for CUDA kernels, ``TORCH_CUDA_ARCH_LIST``;
5. checks the archs nvcc was asked to compile (read from the build's own compiler command
   lines) are exactly ``kernels.cuda_archs``, installs the wheel with ``pip install
   --target`` into ``site/``, imports what jobs will import (where a GPU is present for a
   CUDA kernel), makes the folder read-only and renames it into place.

Any failure removes the temporary folder: a key's folder either holds a complete,
checked build or does not exist.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from ftflow import files
from ftflow.kernels import Build, Kernel, KernelError, probe

BUILD_RECORD = "build.json"
_ARCH_RE = re.compile(r"code=\[?(?:compute_\d+a?,)?sm_(\d+a?)")


def _say(message: str) -> None:
    print(f"[ftflow] {message}", flush=True)


def _check_toolchain(build: Build) -> dict:
    here = probe()
    differ = [
        f"{k}: planned {build.toolchain.get(k)!r}, this node has {here.get(k)!r}"
        for k in sorted(set(build.toolchain) | set(here))
        if build.toolchain.get(k) != here.get(k)
    ]
    if differ:
        raise KernelError(
            f"build {build.name}: this node's toolchain is not the one the workflow was "
            f"planned with ({'; '.join(differ)}); load the same environment (Python, torch, "
            "CUDA module, compiler) where Snakemake runs and on the compute nodes"
        )
    return here


def _check_source(build: Build, archive: Path, origin: Mapping) -> None:
    kernel = build.kernel
    if "path" in kernel.source:
        found, pinned = origin.get("tree_sha256"), kernel.source_sha256
    else:
        found, pinned = files.sha256_file(archive), kernel.source["sha256"]
    if found != pinned:
        raise KernelError(
            f"build {build.name}: source {archive} has sha256 {found}, the build key expects "
            f"{pinned}; rerun prefetch_kernel_sources"
        )


def _unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    tops = [p for p in into.iterdir() if p.is_dir()]
    if (
        len(tops) != 1
        or not (tops[0] / "setup.py").exists()
        and not (tops[0] / "pyproject.toml").exists()
    ):
        raise KernelError(f"{archive}: expected one top folder with a setup.py or pyproject.toml")
    return tops[0]


def _patch(kernel: Kernel, tree: Path) -> None:
    if not kernel.patch:
        return
    proc = subprocess.run(
        ["patch", "-p1", "--forward", "--batch", "-i", str(Path(kernel.patch).resolve())],
        cwd=tree, capture_output=True, text=True,
    )  # fmt: skip
    print(proc.stdout + proc.stderr, flush=True)
    if proc.returncode != 0:
        raise KernelError(
            f"kernel {kernel.name}: patch {kernel.patch} does not apply to this source: "
            f"{(proc.stdout + proc.stderr).strip()[-500:]}"
        )


def _run_logged(cmd: list[str], env: Mapping[str, str], cwd: Path) -> list[str]:
    """Run ``cmd``, copying its output into this job's log; return the output lines."""
    _say("$ " + " ".join(cmd))
    lines = []
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace",
    )  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    if proc.wait() != 0:
        tail = "".join(lines[-30:])
        raise KernelError(f"`{' '.join(cmd[:4])} …` failed ({proc.returncode}):\n{tail}")
    return lines


def _build_env(build: Build, max_jobs: int) -> dict[str, str]:
    prefix = build.kernel.env_prefix
    env = {
        **os.environ,
        f"{prefix}_FORCE_BUILD": "TRUE",
        f"{prefix}_LOCAL_VERSION": build.key,
        "MAX_JOBS": str(max_jobs),
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "1",
    }
    env.pop(f"{prefix}_SKIP_CUDA_BUILD", None)
    if build.cuda_archs:
        env["TORCH_CUDA_ARCH_LIST"] = ";".join(build.cuda_archs)
    return env


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _readonly(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)


def _writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink() and path.exists():
            path.chmod(path.stat().st_mode | 0o200)


def _compile(build: Build, archive: Path, origin: Mapping, staging: Path, max_jobs: int) -> dict:
    kernel = build.kernel
    started = time.monotonic()
    tree = _unpack(archive, staging / "src")
    _patch(kernel, tree)
    env = _build_env(build, max_jobs)
    try:
        output = _run_logged(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
             "--no-index", "-v", "--wheel-dir", str(staging / "wheels"), str(tree)],
            env, staging,
        )  # fmt: skip
    except KernelError as error:
        if re.search(r"urlopen error|Connection refused|Name or service not known|wheel URL",
                     str(error)):  # fmt: skip
            raise KernelError(
                f"build {build.name}: the package's setup.py tried to download a prebuilt "
                f"wheel, which a compute node cannot: it ignores "
                f"{kernel.env_prefix}_FORCE_BUILD=TRUE (is env_prefix right?)\n{error}"
            ) from error
        raise
    wheels = sorted((staging / "wheels").glob("*.whl"))
    if len(wheels) != 1:
        raise KernelError(f"build {build.name}: expected one wheel, pip made {len(wheels)}")
    wheel = wheels[0]
    if f"+{build.key}-" not in wheel.name:
        raise KernelError(
            f"build {build.name}: the wheel {wheel.name} does not carry the key as its local "
            f"version: the package ignores {kernel.env_prefix}_LOCAL_VERSION (wrong env_prefix?)"
        )
    compiled = sorted({m.group(1) for line in output for m in _ARCH_RE.finditer(line)})
    wanted = sorted(a.replace(".", "") for a in build.cuda_archs)
    if compiled != wanted:
        raise KernelError(
            f"build {build.name}: nvcc compiled for sm_{', sm_'.join(compiled) or '(none)'} "
            f"but the key says {', '.join(build.cuda_archs) or 'no CUDA archs'} "
            "(kernels.cuda_archs); a setup.py that ignores TORCH_CUDA_ARCH_LIST needs a "
            "patch (kernels.packages.<name>.patch)"
        )
    seconds = time.monotonic() - started
    _run_logged(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
         "--target", str(staging / "site"), str(wheel)],
        env, staging,
    )  # fmt: skip
    shutil.rmtree(staging / "src")
    return {
        "kernel": kernel.name,
        "version": wheel.name.split("-")[1],
        "key": build.key,
        "toolchain": dict(build.toolchain),
        "cuda": kernel.cuda,
        "cuda_archs": list(build.cuda_archs),
        "compiled_sm": compiled,
        "imports": list(kernel.imports),
        "wheel": wheel.name,
        "wheel_sha256": files.sha256_file(wheel),
        "source": dict(origin),
        "patch_sha256": kernel.settings()["patch_sha256"],
        "max_jobs": max_jobs,
        "compile_seconds": round(seconds, 1),
        # ru_maxrss of children: the largest single compiler/pip process, in KiB.
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    }


def _import_check(record: Mapping, site: Path) -> None:
    """Import what jobs will import, in a fresh interpreter with only this build added."""
    if record["cuda"]:
        import torch

        if not torch.cuda.is_available():
            _say("no GPU on this node: the CUDA kernel's import is checked by each job")
            return
    code = "import importlib,sys\n" + "".join(
        f"m=importlib.import_module({spec.partition(':')[0]!r}); "
        + (f"getattr(m, {spec.partition(':')[2]!r})\n" if ":" in spec else "\n")
        for spec in record["imports"]
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        ),
    }
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KernelError(
            f"build of {record['kernel']} finished but does not import: "
            f"{proc.stderr.strip()[-800:]}"
        )


def build(build: Build, archive: Path, origin: Mapping, manifest: Path, max_jobs: int) -> dict:
    """Build (or reuse) ``build`` and write its ``manifest``; return the build record."""
    _check_toolchain(build)
    _check_source(build, archive, origin)
    folder = build.directory
    lock = folder.parent / f".{folder.name}.lock"
    with files.exclusive(lock, "waiting: another job is building this key"):
        # A job killed mid-build (SIGKILL, a node failure) left its staging folder; under
        # this key's lock no other build can be using one.
        for stale in folder.parent.glob(f".{folder.name}.*.partial"):
            _say(f"removing {stale}, left by a build that was killed")
            _writable(stale)
            shutil.rmtree(stale, ignore_errors=True)
        if (folder / BUILD_RECORD).exists():
            _say(f"{build.name} is already built for this toolchain: reusing {folder}")
        else:
            _say(f"building {build.name} (MAX_JOBS={max_jobs}) into {folder}")
            staging = Path(
                tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent)
            ).resolve()
            try:
                record = _compile(build, archive, origin, staging, max_jobs)
                _import_check(record, staging / "site")
                files.write_json(staging / BUILD_RECORD, record)
                staging.chmod(0o777 & ~_umask())  # mkdtemp made it private
                _readonly(staging)
                os.rename(staging, folder)
            except BaseException:
                _writable(staging)
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _say(
                f"built {record['wheel']} in {record['compile_seconds']} s, peak process "
                f"memory {record['peak_rss_mb']} MB"
            )
    record = json.loads((folder / BUILD_RECORD).read_text())
    files.write_json(manifest, record)
    return record


def main(kernel_spec: Mapping, toolchain: Mapping, cuda_archs, archive: str, origin: str,
         manifest: str, mem_mb: int, cpus: int) -> None:  # fmt: skip
    from ftflow.kernels import Kernel, max_jobs

    # SIGTERM (scancel, a time limit) unwinds like an error: the staging folder goes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    kernel = Kernel(**{**kernel_spec, "imports": tuple(kernel_spec["imports"])})
    planned = Build(kernel, dict(toolchain), tuple(cuda_archs))
    if planned.manifest != manifest:
        raise KernelError(f"build key mismatch: planned {planned.manifest}, asked {manifest}")
    origin_record = json.loads(Path(origin).read_text())
    build(planned, Path(archive), origin_record, Path(manifest),
          max_jobs(mem_mb, cpus, len(planned.cuda_archs)))  # fmt: skip
