"""Launcher commands and scheduler resources for a training job.

One function per question a rule asks: how many processes, which launcher line,
which resources. Multi-node jobs start one launcher per node through ``srun``
with a rendezvous on the job's first node (the SLURM executor plugin wraps the
job itself in ``srun -n1``, so the per-node fan-out is ours to do).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

TRAIN_MODULE = "ftflow.train"
ZERO3_CONFIG = Path(__file__).parent / "zero3.json"
RDZV_PORT = 29500


def _res(method: Mapping) -> Mapping:
    return method.get("resources") or {}


def processes_per_node(method: Mapping) -> int:
    res = _res(method)
    gpus = res.get("gpus_per_node", 0)
    return gpus if gpus else res.get("cpu_processes", 1)


def launch_command(method: Mapping, module: str = TRAIN_MODULE) -> str:
    """The shell words that start ``python -m <module>`` on every process of the job."""
    res = _res(method)
    nodes = res.get("nodes", 1)
    per_node = processes_per_node(method)
    distributed = method.get("distributed", "none")
    if nodes == 1 and per_node == 1 and distributed != "deepspeed_zero3":
        return f"python -m {module}"
    if distributed in ("deepspeed_zero3", "fsdp"):
        # accelerate reads the DeepSpeed/FSDP settings from the TrainingArguments
        # (``deepspeed=`` / ``fsdp=``); here it only spreads the processes.
        words = [
            "accelerate launch",
            f"--num_machines {nodes}",
            f"--num_processes {nodes * per_node}",
        ]
        if nodes > 1:
            words += [
                "--machine_rank $SLURM_NODEID",
                "--main_process_ip $FTFLOW_MASTER_ADDR",
                f"--main_process_port {RDZV_PORT}",
                "--rdzv_backend c10d",
            ]
        elif per_node > 1:
            words.append("--multi_gpu")
        words.append(f"-m {module}")
    else:
        words = ["torchrun", f"--nnodes {nodes}", f"--nproc_per_node {per_node}"]
        if nodes > 1:
            words += [
                "--rdzv_backend c10d",
                f"--rdzv_endpoint $FTFLOW_MASTER_ADDR:{RDZV_PORT}",
                "--rdzv_id $SLURM_JOB_ID",
            ]
        else:
            words.append("--standalone")
        words.append(f"-m {module}")
    command = " ".join(words)
    if nodes > 1:
        # One launcher per node; the first node hosts the rendezvous.
        master = 'FTFLOW_MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)'
        inner = shlex.quote(command + ' "$@"')
        return (
            f"export {master}; srun --nodes {nodes} --ntasks {nodes} --ntasks-per-node 1 "
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
