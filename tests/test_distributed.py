"""DeepSpeed ZeRO-3 for real, on CPU, through the workflow's own launch path.

Two CPU processes (gloo) train the tiny model under ZeRO-3 and under DDP with the same
global batch; the losses agree to :data:`LOSS_TOLERANCE` at every step, for SFT, LoRA
and DPO (with its reference model). The checkpoints hold one ZeRO shard per process,
``final/`` holds full-shape weights that the evaluation's loader reads, one ZeRO-3 process
works (``torchrun --nproc_per_node 1``, not MPI discovery), and a run killed mid-way ends,
resumed, bit-identical to an uninterrupted one.

FSDP needs CUDA (on a CPU the Trainer silently runs it as DDP), so it is refused there
(:mod:`tests.test_config`) and trained only by the GPU-marked test at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import copy_workflow, kill_mid_run, load_default_config, snakemake, write_config
from safetensors.torch import load_file

from ftflow import paths
from ftflow.checkpoints import complete_checkpoints
from ftflow.evaluation.loading import load_for_generation

pytestmark = pytest.mark.slow

#: ZeRO-3 and DDP run the same arithmetic in another order (sharded all-gathers and
#: reduce-scatters instead of one all-reduce); measured here, they agree to ~1e-6.
LOSS_TOLERANCE = 1e-4

SEED = 7
VARIANTS = {
    # method name: (kind, distributed, CPU processes)
    "sft_ddp": ("sft", "ddp", 2),
    "sft_z3": ("sft", "deepspeed_zero3", 2),
    "sft_z3one": ("sft", "deepspeed_zero3", 1),
    "lora_ddp": ("lora", "ddp", 2),
    "lora_z3": ("lora", "deepspeed_zero3", 2),
    "dpo_ddp": ("dpo", "ddp", 2),
    "dpo_z3": ("dpo", "deepspeed_zero3", 2),
    "sft_8bit": ("sft", "none", 1),  # bitsandbytes' adamw_8bit, installed with ftflow
}


def _config(max_steps: int = 4, save_steps: int = 2) -> dict:
    config = load_default_config()
    config.pop("evaluations")
    base = config["methods"]
    methods = {}
    for name, (kind, distributed, processes) in VARIANTS.items():
        method = json.loads(json.dumps(base[kind]))  # a deep copy of the default's method
        method.update(distributed=distributed, max_steps=max_steps, save_steps=save_steps)
        method["resources"].update(cpu_processes=processes, cpus_per_task=1)
        if kind == "dpo":  # both DPO variants start from the same parent
            method["parent"] = {"method": "sft_ddp", "dataset": "secure_code"}
        methods[name] = method
    methods["sft_8bit"]["optimizer"] = "adamw_8bit"
    config["methods"] = methods
    chat = [m for m, v in VARIANTS.items() if v[0] != "dpo"]
    pref = [m for m, v in VARIANTS.items() if v[0] == "dpo"]
    config["grid"] = [
        {"models": ["tiny"], "methods": chat, "datasets": ["secure_code"], "seeds": [SEED]},
        {"models": ["tiny"], "methods": pref, "datasets": ["secure_code_pref"], "seeds": [SEED]},
    ]
    return config


def _run(method: str) -> paths.RunPaths:
    dataset = "secure_code_pref" if VARIANTS[method][0] == "dpo" else "secure_code"
    return paths.RunPaths.of("tiny", method, dataset, SEED)


def _losses(work: Path, method: str) -> list[float]:
    rows = (work / _run(method).metrics).read_text().splitlines()
    return [json.loads(row)["loss"] for row in rows]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Every variant trained through ``snakemake`` (the workflow's own launch lines)."""
    work = copy_workflow(tmp_path_factory.mktemp("zero3") / "ftflow")
    write_config(work, _config())
    targets = [str(_run(m).final) for m in VARIANTS]
    snakemake(work, *targets, "--cores", "2", timeout=1800)
    return work


@pytest.mark.parametrize("kind", ["sft", "lora", "dpo"])
def test_zero3_losses_match_ddp(trained: Path, kind: str):
    ddp, zero3 = _losses(trained, f"{kind}_ddp"), _losses(trained, f"{kind}_z3")
    print(f"{kind} losses, ddp:   {ddp}\n{kind} losses, zero3: {zero3}")
    assert len(ddp) == len(zero3) == 4
    assert all(abs(a - b) <= LOSS_TOLERANCE for a, b in zip(ddp, zero3, strict=True)), (
        ddp,
        zero3,
    )


@pytest.mark.parametrize("method", ["sft_z3", "lora_z3", "dpo_z3"])
def test_a_zero3_run_is_really_sharded(trained: Path, method: str):
    """The Trainer reports DeepSpeed ZeRO-3 on two processes, and each checkpoint holds
    one shard of the model and optimizer states per process."""
    run = _run(method)
    log = (trained / run.log()).read_text()
    assert log.count("[ftflow] trainer: 2 process(es), deepspeed zero3") == 2, log[-3000:]
    for checkpoint in complete_checkpoints(trained / run.checkpoints):
        shards = sorted(p.name for p in checkpoint.glob("global_step*/*optim_states.pt"))
        assert shards == [
            "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ] or [s.replace("bf16_", "") for s in shards] == [
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ], shards
    # the rendered DeepSpeed file is the run's own, with the derived batch
    settings = json.loads((trained / run.launch_file("deepspeed.json")).read_text())
    assert settings["zero_optimization"]["stage"] == 3
    assert settings["train_batch_size"] == 8 and settings["train_micro_batch_size_per_gpu"] == 4
    assert settings["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_zero3_final_holds_full_weights_the_evaluation_loads(trained: Path):
    base = load_file(trained / paths.model_dir("tiny") / "model.safetensors")
    full = load_file(trained / _run("sft_z3").final / "model.safetensors")
    assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in base.items()}
    assert all(v.numel() > 0 for v in full.values())
    ddp = load_file(trained / _run("sft_ddp").final / "model.safetensors")
    assert max((full[k] - ddp[k]).abs().max().item() for k in ddp) < 1e-3
    for method in ("sft_z3", "lora_z3", "dpo_z3"):
        final = trained / _run(method).final
        model, tokenizer = load_for_generation(trained / paths.model_dir("tiny"), final)
        ids = tokenizer("def read(path):", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=4, do_sample=False)
        assert out.shape[1] > ids["input_ids"].shape[1], method


def test_one_zero3_process_trains(trained: Path):
    """``distributed: deepspeed_zero3`` on one process (once ``ModuleNotFoundError: mpi4py``)."""
    log = (trained / _run("sft_z3one").log()).read_text()
    assert "[ftflow] trainer: 1 process(es), deepspeed zero3" in log, log[-3000:]
    one, two = _losses(trained, "sft_z3one"), _losses(trained, "sft_ddp")
    print(f"sft losses, 1-process zero3: {one}\nsft losses, 2-process ddp:   {two}")
    # one process accumulates 2 micro-batches where two processes average them
    assert all(abs(a - b) <= LOSS_TOLERANCE for a, b in zip(one, two, strict=True)), (one, two)


def test_zero3_sigkill_then_resume_matches_uninterrupted(tmp_path: Path):
    """SIGKILL of the whole job (Snakemake, torchrun and both workers) after a checkpoint;
    the rerun resumes from it and ends with the uninterrupted run's exact weights."""
    config = _config(max_steps=8, save_steps=2)
    config["methods"]["sft_z3"]["per_device_batch_size"] = 1  # slower steps: time to kill
    run = _run("sft_z3")
    works = {}
    for name in ("straight", "killed"):
        works[name] = copy_workflow(tmp_path / name)
        write_config(works[name], config)
    snakemake(works["straight"], str(run.final), "--cores", "2", timeout=1200)

    work = works["killed"]
    snakemake(work, str(paths.prepared("tiny", "secure_code")), str(run.run_config), "--cores", "2")
    killed_at = kill_mid_run(work, run.final, after_step=2, cores="2")
    assert killed_at < 8

    snakemake(work, str(run.final), "--cores", "2", "--rerun-incomplete", timeout=1200)
    log = (work / run.log()).read_text()
    resumed = int(log.split("resuming from checkpoint-")[1].split()[0])
    assert resumed >= killed_at
    a = load_file(work / run.final / "model.safetensors")
    b = load_file(works["straight"] / run.final / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (work / run.metrics).read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_the_8bit_optimizer_trains(trained: Path):
    """``optimizer: adamw_8bit`` (bitsandbytes, also on a CPU) with one process."""
    losses = _losses(trained, "sft_8bit")
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert losses != _losses(trained, "sft_ddp")  # another optimizer, another path


def test_two_jobs_on_one_host_at_once_both_finish(trained: Path, tmp_path: Path):
    """Two 2-process ZeRO-3 jobs side by side on one machine (as SLURM may place two jobs
    on one node): each ``torchrun --standalone`` binds its own free port, none is fixed."""
    work = tmp_path / "pair"
    shutil.copytree(trained, work, ignore=shutil.ignore_patterns("results", ".snakemake"))
    config = _config()
    config["grid"] = [
        {"models": ["tiny"], "methods": ["sft_z3"], "datasets": ["secure_code"], "seeds": [1, 2]}
    ]
    write_config(work, config)
    runs = [paths.RunPaths.of("tiny", "sft_z3", "secure_code", seed) for seed in (1, 2)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *[str(r.final) for r in runs], "--cores", "4"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    together = False
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        logs = [work / r.log() for r in runs]
        training = [log.exists() and "[ftflow] trainer:" in log.read_text() for log in logs]
        finished = [(work / r.final).exists() for r in runs]
        together = together or (all(training) and not any(finished))
        time.sleep(0.2)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output[-3000:]
    assert together, "the two jobs did not train at the same time"
    for run in runs:
        log = (work / run.log()).read_text()
        assert "EADDRINUSE" not in log and "address already in use" not in log.lower()
        assert (work / run.final / "model.safetensors").exists()


def test_torch_extensions_are_compiled_once_under_resources(trained: Path):
    """DeepSpeed's JIT op lands in resources/, where every later job finds it."""
    built = list((trained / "resources/cache/torch_extensions").rglob("deepspeed_shm_comm*.so"))
    assert built, "the DeepSpeed op cache is not under resources/cache/torch_extensions"
    logs = [(trained / _run(m).log()).read_text() for m in VARIANTS if "z3" in m]
    # the op is built by the first ZeRO-3 job; later jobs load it from the cache
    assert sum("Building extension module deepspeed_shm_comm" in log for log in logs) <= 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs CUDA")
def test_fsdp_on_a_gpu_is_sharded_and_exports_full_weights(tmp_path: Path):
    config = _config()
    method = config["methods"]["sft_ddp"]
    method.update(distributed="fsdp")
    method["resources"] = {"gpus_per_node": 1, "cpus_per_task": 2, "mem_mb": 8000}
    config["methods"] = {"sft_ddp": method}
    config["grid"] = [config["grid"][0] | {"methods": ["sft_ddp"]}]
    work = copy_workflow(tmp_path / "ftflow")
    write_config(work, config)
    run = _run("sft_ddp")
    snakemake(work, str(run.final), "--cores", "2")
    assert "deepspeed" not in (work / run.log()).read_text().split("trainer:")[1].split("\n")[0]
    assert "fsdp2" in (work / run.log()).read_text()
    base = load_file(work / paths.model_dir("tiny") / "model.safetensors")
    full = load_file(work / run.final / "model.safetensors")
    assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in base.items()}
    checkpoint = complete_checkpoints(work / run.checkpoints)[-1]
    assert list(checkpoint.rglob("*.distcp")), "FSDP checkpoints are sharded state dicts"
