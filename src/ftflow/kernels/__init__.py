"""Compiled kernels (``mamba_ssm``, ``causal_conv1d``, or a package of the user's) in the DAG.

A model that lists ``needs_kernels`` gets, for each kernel, two jobs upstream of its
training and evaluation jobs:

* ``prefetch_kernel_sources`` (login node, internet): the pinned source archive, checked
  against its sha256, into ``resources/kernels/src/`` (:mod:`ftflow.kernels.fetch`);
* ``build_kernels`` (compute node, offline): one wheel per *build key*, installed once into
  a read-only directory ``resources/kernels/{toolchain}/{build}/site`` (:mod:`.build`).

The build key is a hash of everything that determines the binary: the source archive's
sha256, the patch applied to it, the toolchain (:func:`probe`: Python tag, platform, torch
version, its CUDA version and C++ ABI flag, nvcc's version, the C++ compiler) and, for a
CUDA kernel, the arch list compiled (``kernels.cuda_archs``, checked against the compiled
objects after the build). The toolchain is probed where Snakemake plans (the login node,
same environment as the compute nodes on a shared filesystem); the build job probes its
own node again and refuses to build when the two differ, so a key never names a binary it
does not hold.

Jobs of such a model get the build directories on ``PYTHONPATH`` (nothing is ``pip
install``-ed inside a job) and a Triton cache of their own on node-local disk; at start
they import what the model's code would (:func:`require`): a kernel that fails to import is
an error naming the import and its exception, never a silent fall back to pure torch.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import importlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ftflow import files, paths

PATCHES = Path(__file__).parent / "patches"

#: The kernels ftflow knows, pinned. ``kernels.packages`` in a config adds others or
#: replaces one of these (e.g. a newer pin).
BUILTIN: dict[str, dict] = {
    "causal_conv1d": {
        "source": {
            "pypi": "causal-conv1d",
            "version": "1.7.0",
            "sha256": "3202758494eaa7b597ce1c282dfa188889506bfcb92cad3c407d26736bfcd32b",
        },
        "env_prefix": "CAUSAL_CONV1D",
        "cuda": True,
        "patch": str(PATCHES / "causal_conv1d.patch"),
        # What transformers' Mamba-2 code resolves (transformers.integrations.hub_kernels);
        # when one fails it silently runs pure torch instead.
        "imports": ["causal_conv1d:causal_conv1d_fn", "causal_conv1d:causal_conv1d_update"],
    },
    "mamba_ssm": {
        "source": {
            "pypi": "mamba-ssm",
            "version": "2.3.2.post1",
            "sha256": "104cc47e9101e5401a675fa2b784f2952b9b037f3b1dd83b5ac544394e95d028",
        },
        "env_prefix": "MAMBA",
        "cuda": True,
        "patch": str(PATCHES / "mamba_ssm.patch"),
        "imports": [
            "selective_scan_cuda",
            "mamba_ssm.ops.triton.ssd_combined:mamba_chunk_scan_combined",
            "mamba_ssm.ops.triton.ssd_combined:mamba_split_conv1d_scan_combined",
            "mamba_ssm.ops.triton.selective_state_update:selective_state_update",
        ],
    },
}

#: ``kernels.resources`` when the config sets none: a GPU node with room to compile.
DEFAULT_RESOURCES = {"gpus_per_node": 1, "cpus_per_task": 8, "mem_mb": 32000, "runtime": 240}

#: Memory one compiler process needs per CUDA arch it compiles, and once besides (MiB).
#: Measured: one ``.cu`` file of mamba_ssm takes 0.5–0.7 GB for one arch.
MEM_PER_ARCH_MB = 1024
MEM_BASE_MB = 1024

KERNEL_SOURCE = f"{paths.RESOURCES}/kernels/src/{{kernel}}.tar.gz"
KERNEL_MANIFEST = f"{paths.RESOURCES}/kernels/{{toolchain}}/{{build}}.json"


class KernelError(RuntimeError):
    """A kernel could not be fetched, built or loaded; the message says which and why."""


@dataclass(frozen=True)
class Kernel:
    """One kernel package as the config (or :data:`BUILTIN`) defines it."""

    name: str
    source: Mapping
    env_prefix: str
    imports: tuple[str, ...]
    cuda: bool = True
    patch: str | None = None

    @property
    def source_sha256(self) -> str:
        """Pinned for pypi/url sources; a path source's archive is hashed when packed."""
        return self.source.get("sha256") or tree_sha256(self.source["path"])

    def settings(self) -> dict:
        """What goes into the build key besides the toolchain and the archs."""
        return {
            "name": self.name,
            "source_sha256": self.source_sha256,
            "patch_sha256": files.sha256_file(self.patch) if self.patch else None,
            "env_prefix": self.env_prefix,
        }


def packages(config: Mapping) -> dict[str, Kernel]:
    """Every kernel a config may name: :data:`BUILTIN` updated by ``kernels.packages``."""
    defined = {**BUILTIN, **((config.get("kernels") or {}).get("packages") or {})}
    return {
        name: Kernel(
            name=name,
            source=spec["source"],
            env_prefix=spec["env_prefix"],
            imports=tuple(spec["imports"]),
            cuda=spec.get("cuda", True),
            patch=spec.get("patch"),
        )
        for name, spec in defined.items()
    }


def tree_sha256(root: str | Path) -> str:
    """A digest of a source folder: every file's relative path and bytes, in order."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if is_source_file(p, root)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(files.sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def is_source_file(path: Path, root: str | Path) -> bool:
    """A file of a source tree; build leftovers (``build/``, ``*.egg-info``, caches) are not."""
    if not path.is_file():
        return False
    parts = path.relative_to(root).parts
    return not any(
        p in ("build", "dist", "__pycache__", ".git") or p.endswith(".egg-info") for p in parts
    )


# ------------------------------------------------------------------------- toolchain


def _nvcc() -> str | None:
    """nvcc of the CUDA that torch's extension builder would use, else the one on PATH."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [Path(home) / "bin" / "nvcc"] if home else []
    on_path = shutil.which("nvcc")
    candidates += [Path(on_path)] if on_path else []
    for nvcc in candidates:
        if nvcc.exists():
            out = subprocess.run([str(nvcc), "--version"], capture_output=True, text=True)
            found = re.search(r"release (\d+\.\d+)", out.stdout)
            if found:
                return found.group(1)
    return None


def _cxx() -> str | None:
    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        return None
    out = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout else None


def probe() -> dict:
    """The toolchain of this Python environment on this node: what a compiled kernel's
    binary depends on. Imports torch (a second or two)."""
    import torch

    return {
        "python": f"cp{sys.version_info.major}{sys.version_info.minor}",
        "platform": sysconfig.get_platform().replace("-", "_").replace(".", "_"),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI),
        "nvcc": _nvcc(),
        "cxx": _cxx(),
    }


@functools.cache
def _probe_once() -> str:
    return json.dumps(probe(), sort_keys=True)


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def toolchain_id(toolchain: Mapping) -> str:
    """A readable, unique folder name: ``cp311-torch2.9.1-cu12.8-1a2b3c4d``."""
    torch = re.sub(r"[^A-Za-z0-9.]+", "_", toolchain["torch"].split("+")[0])
    cuda = f"cu{toolchain['torch_cuda']}" if toolchain["torch_cuda"] else "cpu"
    return f"{toolchain['python']}-torch{torch}-{cuda}-{_digest(toolchain)[:8]}"


# ------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class Build:
    """One kernel built for one toolchain: the build job's identity and its paths."""

    kernel: Kernel
    toolchain: Mapping = field(hash=False)
    cuda_archs: tuple[str, ...] = ()

    @functools.cached_property
    def key(self) -> str:
        return _digest(
            {
                "kernel": self.kernel.settings(),
                "toolchain": dict(self.toolchain),
                "cuda_archs": list(self.cuda_archs),
            }
        )[:16]

    @property
    def toolchain_id(self) -> str:
        return toolchain_id(self.toolchain)

    @property
    def name(self) -> str:
        return f"{self.kernel.name}-{self.key}"

    @property
    def manifest(self) -> str:
        return KERNEL_MANIFEST.format(toolchain=self.toolchain_id, build=self.name)

    @property
    def directory(self) -> Path:
        """Where the build lives (not a Snakemake output: a finished key is never deleted)."""
        return Path(self.manifest).with_suffix("")

    @property
    def site(self) -> Path:
        return self.directory / "site"

    @property
    def source(self) -> str:
        return KERNEL_SOURCE.format(kernel=self.kernel.name)


def needed(config: Mapping) -> list[str]:
    """Names of the kernels some model of the config needs, in order."""
    names: dict[str, None] = {}
    for model in config["models"].values():
        names.update(dict.fromkeys(model.get("needs_kernels") or []))
    return list(names)


def builds(config: Mapping, model: str) -> list[Build]:
    """The builds a model's jobs depend on (empty when it needs no kernels)."""
    wanted = config["models"][model].get("needs_kernels") or []
    if not wanted:
        return []
    defined = packages(config)
    toolchain = json.loads(_probe_once())
    archs = tuple((config.get("kernels") or {}).get("cuda_archs") or ())
    return [Build(defined[name], toolchain, archs if defined[name].cuda else ()) for name in wanted]


def all_builds(config: Mapping) -> dict[str, Build]:
    """Every build of the config by manifest path (what the Snakefile's rules look up)."""
    return {b.manifest: b for model in config["models"] for b in builds(config, model)}


def slurm_resources(config: Mapping) -> dict:
    """The build job's resources (``kernels.resources`` over :data:`DEFAULT_RESOURCES`)."""
    res = {**DEFAULT_RESOURCES, **((config.get("kernels") or {}).get("resources") or {})}
    out = {k: res[k] for k in ("cpus_per_task", "mem_mb", "runtime")}
    if res["gpus_per_node"]:
        out.update(gres=f"gpu:{res['gpus_per_node']}", tasks_per_gpu=0)
    if res.get("constraint"):
        out["constraint"] = res["constraint"]
    return out


def max_jobs(mem_mb: int, cpus: int, n_archs: int) -> int:
    """Parallel compiler processes that fit the job's memory (nvcc's is the known OOM)."""
    per_job = MEM_BASE_MB + MEM_PER_ARCH_MB * max(1, n_archs)
    return max(1, min(cpus, mem_mb // per_job))


# ------------------------------------------------------------------------- job side


def site_of(manifest: str | Path) -> Path:
    """The ``site/`` folder a build's manifest stands beside, absolute: it goes on
    ``PYTHONPATH``, which must not depend on a process's working directory."""
    return Path(os.path.abspath(manifest)).with_suffix("") / "site"


def env_exports(manifests: Iterable[str]) -> str:
    """Shell words that put the builds on ``PYTHONPATH`` and give the job a Triton cache of
    its own on node-local disk (Triton compiles Mamba-2's kernels at first use; a cache on
    NFS is slow and shared between jobs that race on it), removed when the job's shell
    exits."""
    sites = [str(site_of(m)) for m in manifests]
    if not sites:
        return ""
    path = ":".join(sites)
    return (
        f'export PYTHONPATH={path}"${{PYTHONPATH:+:$PYTHONPATH}}" && '
        'export TRITON_CACHE_DIR="$(mktemp -d "${TMPDIR:-/tmp}/ftflow-triton.XXXXXX")" && '
        "trap 'rm -rf \"$TRITON_CACHE_DIR\"' EXIT && "
        f"export FTFLOW_KERNELS={','.join(manifests)} && "
    )


def activate(manifests: Iterable[str]) -> None:
    """The same as :func:`env_exports`, for a job running in this process (a ``script:``
    rule); call it before importing torch or transformers."""
    import tempfile

    manifests = list(manifests)
    if not manifests:
        return
    sites = [str(site_of(m)) for m in manifests]
    sys.path[:0] = [s for s in sites if s not in sys.path]
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*sites, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    base = os.environ.get("TMPDIR") or tempfile.gettempdir()
    cache = tempfile.mkdtemp(prefix="ftflow-triton.", dir=base)
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ["TRITON_CACHE_DIR"] = cache
    os.environ["FTFLOW_KERNELS"] = ",".join(manifests)


def use(manifests: Iterable[str]) -> None:
    """:func:`activate` then :func:`require`, logging what loaded (``script:`` rules)."""
    manifests = list(manifests)
    activate(manifests)
    for line in require(manifests):
        print(f"[ftflow] {line}", file=sys.stderr, flush=True)


def _import(spec: str) -> Path:
    """Import ``module`` or ``module:attribute``; return the module's file."""
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    if attribute:
        getattr(module, attribute)
    return Path(getattr(module, "__file__", "") or "")


def require(manifests: Iterable[str] | None = None) -> list[str]:
    """Check, at a job's start, that every kernel it depends on loads from its build.

    ``manifests`` defaults to ``FTFLOW_KERNELS`` (set by the job's shell line). Raises
    :class:`KernelError` when the build was made for another toolchain than this job runs
    with, when a CUDA kernel finds no GPU or was not compiled for this GPU's arch, or when
    an import fails (naming it and its exception: the model would silently run pure-torch
    code instead), or loads from somewhere else than the build. Returns log lines.
    """
    if manifests is None:
        manifests = [m for m in os.environ.get("FTFLOW_KERNELS", "").split(",") if m]
    lines = []
    here = None
    for manifest in manifests:
        built = json.loads(Path(manifest).read_text())
        here = here or probe()
        name = built["kernel"]
        differ = [
            f"{k}: built with {built['toolchain'][k]!r}, this job has {here[k]!r}"
            for k in ("python", "platform", "torch", "torch_cuda", "cxx11_abi")
            if built["toolchain"].get(k) != here[k]
        ]
        if differ:
            raise KernelError(
                f"kernel {name} ({manifest}) was built for another toolchain than this job "
                f"runs with ({'; '.join(differ)}): rerun build_kernels for this environment"
            )
        if built["cuda"]:
            _require_gpu_arch(name, built)
        site = site_of(manifest)
        for spec in built["imports"]:
            try:
                where = _import(spec)
            except Exception as error:  # an ImportError, or a missing attribute
                raise KernelError(
                    f"kernel {name}: `{spec}` failed to import ({type(error).__name__}: "
                    f"{error}); the model's code would silently fall back to slow pure-torch "
                    f"code. Build: {manifest}"
                ) from error
            if site.resolve() not in where.resolve().parents:
                raise KernelError(
                    f"kernel {name}: `{spec}` was imported from {where}, not from its build "
                    f"{site}: another installation shadows it on sys.path"
                )
        lines.append(f"kernel {name} {built['version']} loaded from {site}")
    if lines:
        lines.append(f"triton cache: {os.environ.get('TRITON_CACHE_DIR', '(Triton default)')}")
    return lines


def _require_gpu_arch(name: str, built: Mapping) -> None:
    import torch

    if not torch.cuda.is_available():
        raise KernelError(
            f"kernel {name} is a CUDA kernel and this job sees no GPU: give the method (or "
            "evaluation) gpus_per_node ≥ 1"
        )
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}.{minor}"
    if built["cuda_archs"] and arch not in built["cuda_archs"]:
        raise KernelError(
            f"kernel {name} was compiled for archs {', '.join(built['cuda_archs'])}; this "
            f"GPU ({torch.cuda.get_device_name()}) is {arch}: add it to kernels.cuda_archs"
        )
