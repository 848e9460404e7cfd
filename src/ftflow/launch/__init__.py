"""Launcher commands and scheduler resources for a training job.

One function per question a rule asks: how many processes, which launcher line,
which resources. Multi-node jobs start one launcher per node through ``srun``
with a rendezvous on the job's first node (the SLURM executor plugin wraps the
job itself in ``srun -n1``, so the per-node fan-out is ours to do).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import signal
from collections.abc import Mapping

TRAIN_MODULE = "ftflow.train"

#: The rendezvous port of a multi-node job, derived from its SLURM job id so that two jobs
#: sharing a node never fight over one port (torchrun and accelerate would both default to
#: 29500). A single-node job needs none: ``torchrun --standalone`` binds a free port.
RDZV_PORT = "$((20000 + SLURM_JOB_ID % 40000))"

#: Modes whose processes need a process group even when there is only one of them:
#: DeepSpeed initialises ``torch.distributed`` itself and, without a launcher's
#: environment, falls back to MPI discovery (``ModuleNotFoundError: mpi4py``).
NEEDS_LAUNCHER = frozenset({"deepspeed_zero3", "fsdp"})


def _res(method: Mapping) -> Mapping:
    return method.get("resources") or {}


def processes_per_node(method: Mapping) -> int:
    res = _res(method)
    gpus = res.get("gpus_per_node", 0)
    return gpus if gpus else res.get("cpu_processes", 1)


def launch_command(method: Mapping, module: str = TRAIN_MODULE) -> str:
    """The shell words that start ``python -m <module>`` on every process of the job.

    One process without DeepSpeed/FSDP runs plain ``python``. Everything else runs under
    ``torchrun``: DDP, DeepSpeed ZeRO-3 and FSDP alike, since the Trainer configures
    DeepSpeed and FSDP itself from its arguments (``deepspeed=`` / ``fsdp=``), the
    launcher only spreads the processes. (``accelerate launch`` would add nothing but
    traps: a fixed port, and MPI discovery for one DeepSpeed process.)
    """
    res = _res(method)
    nodes = res.get("nodes", 1)
    per_node = processes_per_node(method)
    distributed = method.get("distributed", "none")
    if nodes == 1 and per_node == 1 and distributed not in NEEDS_LAUNCHER:
        return f"python -m {module}"
    words = ["torchrun", f"--nnodes {nodes}", f"--nproc_per_node {per_node}"]
    if nodes > 1:
        words += [
            "--rdzv_backend c10d",
            "--rdzv_endpoint $FTFLOW_MASTER_ADDR:$FTFLOW_RDZV_PORT",
            "--rdzv_id $SLURM_JOB_ID",
        ]
    else:
        words.append("--standalone")
    words.append(f"-m {module}")
    command = " ".join(words)
    if nodes > 1:
        # One launcher per node; the first node hosts the rendezvous. SLURM's warning
        # signal reaches every process of this step: the launcher ignores it (and its
        # workers inherit that), the trainer handles it (ftflow.interrupt).
        master = 'FTFLOW_MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)'
        inner = shlex.quote("trap '' USR1; " + command + ' "$@"')
        return (
            f"export {master} FTFLOW_RDZV_PORT={RDZV_PORT}; "
            f"srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 "
            f"bash -c {inner} launcher"
        )
    return command


def slurm_resources(method: Mapping) -> dict[str, int | str]:
    """Snakemake resources for a training job, as the SLURM executor plugin reads them.

    One SLURM task per node hosts that node's launcher, which starts one process per
    GPU; so CPUs and memory are asked per node. GPUs are asked per node with
    ``gres=gpu:N`` (the plugin's ``gpu`` resource would ask ``--gpus`` for the whole
    job, which SLURM may spread unevenly). Multi-node jobs are marked ``mpi`` so the
    plugin does not wrap them in ``srun -n1``: their command runs ``srun`` itself.
    """
    res = _res(method)
    nodes = res.get("nodes", 1)
    gpus = res.get("gpus_per_node", 0)
    per_node = processes_per_node(method)
    out: dict[str, int | str] = {
        "nodes": nodes,
        "cpus_per_task": res.get("cpus_per_task", 1) * per_node,
        "mem_mb": res.get("mem_mb", 4000),
        "runtime": res.get("runtime", 60),
    }
    if gpus:
        out["gres"] = f"gpu:{gpus}"
        out["tasks_per_gpu"] = 0  # one task per node, not one per GPU
    if nodes > 1:
        out["mpi"] = "srun"
        out["tasks"] = nodes
    if res.get("constraint"):
        out["constraint"] = res["constraint"]
    return out


def die_with_launcher() -> None:
    """Make this worker die when the launcher that started it dies (Linux).

    ``torchrun`` starts each worker in a session of its own, so a signal to the job's
    process group (a SIGKILL of the job, ``scancel`` of a step tracked by process tree)
    kills ``torchrun`` and leaves the workers training on, orphaned — writing into the
    run directory while the retried job resumes there. With ``PR_SET_PDEATHSIG`` the kernel
    sends SIGKILL to the worker as soon as its parent is gone. No-op outside a launcher.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: nothing to bind to
        return
    pr_set_pdeathsig = 1
    prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the call took effect
        os.kill(os.getpid(), signal.SIGKILL)
