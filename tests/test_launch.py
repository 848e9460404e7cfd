"""Launcher lines and SLURM resources for 1 GPU, 8 GPUs on one node, 4 nodes × 4 GPUs."""

from __future__ import annotations

import pytest

from ftflow import config as ftconfig
from ftflow.launch import launch_command, slurm_resources


def method(nodes=1, gpus=0, distributed="none", cpus=8, processes=1):
    return {
        "distributed": distributed,
        "global_batch_size": 128,
        "per_device_batch_size": 4,
        "resources": {
            "nodes": nodes,
            "gpus_per_node": gpus,
            "cpus_per_task": cpus,
            "cpu_processes": processes,
            "mem_mb": 64000,
            "runtime": 90,
        },
    }


def test_cpu_single_process():
    m = method()
    assert launch_command(m) == "python -m ftflow.train"
    assert slurm_resources(m) == {"nodes": 1, "cpus_per_task": 8, "mem_mb": 64000, "runtime": 90}


def test_cpu_ddp_two_processes():
    m = method(distributed="ddp", cpus=1, processes=2)
    assert (
        launch_command(m) == "torchrun --nnodes 1 --nproc_per_node 2 --standalone -m ftflow.train"
    )
    assert slurm_resources(m)["cpus_per_task"] == 2


@pytest.mark.parametrize("distributed", ["deepspeed_zero3", "fsdp"])
def test_one_sharded_process_still_gets_a_launcher(distributed):
    """DeepSpeed on one process without a launcher looks for MPI (``mpi4py``) and dies."""
    m = method(gpus=1, distributed=distributed)
    assert (
        launch_command(m) == "torchrun --nnodes 1 --nproc_per_node 1 --standalone -m ftflow.train"
    )


def test_no_single_node_line_names_a_fixed_port():
    for distributed in ("ddp", "deepspeed_zero3", "fsdp"):
        line = launch_command(method(gpus=4, distributed=distributed))
        assert "--standalone" in line and "port" not in line and "29500" not in line


def test_one_gpu():
    m = method(gpus=1)
    assert launch_command(m) == "python -m ftflow.train"
    res = slurm_resources(m)
    assert res["gres"] == "gpu:1" and res["cpus_per_task"] == 8 and res["tasks_per_gpu"] == 0
    assert "mpi" not in res and "tasks" not in res
    assert ftconfig.derive_batch(m).gradient_accumulation_steps == 32


@pytest.mark.parametrize(
    "distributed,expected",
    [
        ("ddp", "torchrun --nnodes 1 --nproc_per_node 8 --standalone -m ftflow.train"),
        (
            "deepspeed_zero3",
            "torchrun --nnodes 1 --nproc_per_node 8 --standalone -m ftflow.train",
        ),
        ("fsdp", "torchrun --nnodes 1 --nproc_per_node 8 --standalone -m ftflow.train"),
    ],
)
def test_eight_gpus_one_node(distributed, expected):
    m = method(gpus=8, distributed=distributed)
    assert launch_command(m) == expected
    res = slurm_resources(m)
    assert res == {
        "nodes": 1,
        "cpus_per_task": 64,  # 8 CPUs per GPU, one task hosts all 8 processes
        "mem_mb": 64000,
        "runtime": 90,
        "gres": "gpu:8",
        "tasks_per_gpu": 0,
    }
    assert ftconfig.derive_batch(m).gradient_accumulation_steps == 4


@pytest.mark.parametrize("distributed", ["ddp", "deepspeed_zero3"])
def test_four_nodes_by_four_gpus(distributed):
    m = method(nodes=4, gpus=4, distributed=distributed)
    line = launch_command(m)
    # One launcher per node through srun, rendezvous on the job's first node.
    assert line.startswith("export FTFLOW_MASTER_ADDR=$(scontrol show hostnames")
    assert "srun --nodes 4 --ntasks 4 --ntasks-per-node 1" in line
    # every mode: torchrun per node (the Trainer sets up DeepSpeed/FSDP itself)
    assert "torchrun --nnodes 4 --nproc_per_node 4 --rdzv_backend c10d" in line
    # the port is the job's own: two jobs on one node never share it
    assert "FTFLOW_RDZV_PORT=$((20000 + SLURM_JOB_ID % 40000))" in line
    assert "--rdzv_endpoint $FTFLOW_MASTER_ADDR:$FTFLOW_RDZV_PORT" in line
    assert "29500" not in line
    res = slurm_resources(m)
    assert res["nodes"] == 4 and res["gres"] == "gpu:4" and res["cpus_per_task"] == 32
    # marked mpi: the plugin then runs our command as is instead of in `srun -n1`
    assert res["mpi"] == "srun" and res["tasks"] == 4
    assert ftconfig.derive_batch(m).gradient_accumulation_steps == 2
