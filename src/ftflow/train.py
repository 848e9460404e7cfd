"""Train one run with TRL: full SFT, LoRA (PEFT) or DPO.

Usage (what the ``train`` rule runs, under ``python``, ``torchrun`` or
``accelerate launch``)::

    python -m ftflow.train results/<model>/<method>/<dataset>/seed<seed>/run.yaml

Contract, the same for every backend:

- reads ``run.yaml`` (the resolved config), the prefetched model and the prepared
  dataset manifest; runs offline;
- writes resumable state under ``checkpoints/`` (not a Snakemake output, so it
  survives a failed or killed attempt) and resumes from the newest *complete*
  checkpoint — one whose ``.complete`` marker was written after the trainer saved it —
  but only from checkpoints made for exactly this run (:mod:`ftflow.checkpoints`);
- writes ``metrics.jsonl`` (one line per logged step, the same keys for every
  method) and ``final/`` (full weights, or the adapter for LoRA) only at the end,
  atomically, with no absolute paths inside;
- stops with :class:`NonFiniteLossError` as soon as a logged loss is NaN or Inf.

Assumes the dataset was prepared by :mod:`ftflow.prepare` for this model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from ftflow import offline, paths
from ftflow.checkpoints import (
    COMPLETE_MARKER,
    METRICS_PARTIAL,
    StaleCheckpointsError,
    check_claimed,
    claim,
    complete_checkpoints,
    discard_incomplete,
    mark_finished,
    step,
    truncate_metrics,
)

BASE_KEYS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second")
DPO_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss."""


def metric_keys(kind: str) -> tuple[str, ...]:
    return BASE_KEYS + (DPO_KEYS if kind == "dpo" else ())


# ------------------------------------------------------------------------ callbacks


def _callbacks(run_dir: Path, kind: str):
    from transformers import TrainerCallback

    partial = run_dir / "checkpoints" / METRICS_PARTIAL
    keys = metric_keys(kind)

    class MetricsCallback(TrainerCallback):
        """One JSON line per logged step; NaN/Inf loss stops training."""

        def __init__(self):
            self.last_time = None
            self.last_tokens = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.last_time = time.perf_counter()
            self.last_tokens = state.num_input_tokens_seen or 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:  # the end-of-training summary
                return
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"loss is {loss} at step {state.global_step}: stopping instead of training "
                    "on (lower the learning rate, check the data, or use float32)"
                )
            now = time.perf_counter()
            tokens = state.num_input_tokens_seen or 0
            elapsed = max(now - self.last_time, 1e-9)
            row = {
                "step": state.global_step,
                "epoch": logs.get("epoch", state.epoch),
                "loss": loss,
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens_per_second": (tokens - self.last_tokens) / elapsed,
            }
            for key in DPO_KEYS:
                if key in keys:
                    row[key] = logs.get(key)
            self.last_time, self.last_tokens = now, tokens
            if state.is_world_process_zero:
                with open(partial, "a") as handle:
                    handle.write(json.dumps(row) + "\n")

    class CompleteMarker(TrainerCallback):
        """Mark a checkpoint complete once the trainer has saved all of it."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if checkpoint.is_dir():
                    (checkpoint / COMPLETE_MARKER).write_text(f"{state.global_step}\n")

    return [MetricsCallback(), CompleteMarker()]


# -------------------------------------------------------------------------- trainer


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _trainer_args(cfg: dict, run_dir: Path) -> dict:
    """Arguments common to SFTConfig and DPOConfig, from the resolved run config."""
    import torch

    method, batch, dataset = cfg["method"], cfg["batch"], cfg["dataset"]
    dtype = cfg["model"]["dtype"]
    args = {
        "output_dir": str(run_dir / "checkpoints"),
        "seed": cfg["run"]["seed"],
        "data_seed": cfg["run"]["seed"],
        "per_device_train_batch_size": batch["per_device_batch_size"],
        "gradient_accumulation_steps": batch["gradient_accumulation_steps"],
        "learning_rate": method["learning_rate"],
        "lr_scheduler_type": method["lr_scheduler"],
        "warmup_steps": method["warmup_ratio"],  # a float < 1 is a ratio
        "weight_decay": method["weight_decay"],
        "max_grad_norm": method["max_grad_norm"],
        "num_train_epochs": method["epochs"],
        "max_steps": method.get("max_steps", -1),
        "optim": method["optimizer"],
        "gradient_checkpointing": method["gradient_checkpointing"],
        "logging_steps": method["logging_steps"],
        "logging_nan_inf_filter": False,  # report NaN/Inf as it is, so we can stop on it
        "save_strategy": "steps",
        "save_steps": method["save_steps"],
        "save_total_limit": method["save_total_limit"],
        # TRL defaults bf16 to True even on a CPU; precision follows the model config.
        "bf16": dtype == "bfloat16",
        "fp16": dtype == "float16",
        "use_cpu": not torch.cuda.is_available(),
        "report_to": "none",
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
        "max_length": dataset["max_length"],
        "disable_tqdm": True,
    }
    if method["lr_scheduler"] == "cosine_with_min_lr":
        args["lr_scheduler_kwargs"] = {"min_lr_rate": method["min_lr_rate"]}
    if method["distributed"] == "deepspeed_zero3":
        args["deepspeed"] = str(Path(__file__).parent / "launch" / "zero3.json")
    return args


def _load_model(path: Path, cfg: dict):
    from transformers import AutoModelForCausalLM

    model_cfg = cfg["model"]
    return AutoModelForCausalLM.from_pretrained(
        path,
        dtype=_dtype(model_cfg["dtype"]),
        attn_implementation=model_cfg["attn_implementation"],
        trust_remote_code=model_cfg["trust_remote_code"],
    )


def build_trainer(cfg: dict, run_dir: Path, model_dir: Path, manifest: Path, parent: Path | None):
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from ftflow.prepare import load_entry

    kind = cfg["method"]["kind"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_dataset, _info = load_entry(manifest)
    callbacks = _callbacks(run_dir, kind)
    args = _trainer_args(cfg, run_dir)

    if kind in ("sft", "lora"):
        peft_config = None
        if kind == "lora":
            from peft import LoraConfig

            lora = cfg["method"]["lora"]
            peft_config = LoraConfig(
                r=lora["r"],
                lora_alpha=lora["alpha"],
                lora_dropout=lora["dropout"],
                target_modules=lora["target_modules"],
                task_type="CAUSAL_LM",
            )
        return SFTTrainer(
            model=_load_model(model_dir, cfg),
            args=SFTConfig(**args, dataset_num_proc=None),
            train_dataset=train_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )

    # DPO: the policy starts from the parent SFT model, which is also the reference.
    class PretokenizedDPOTrainer(DPOTrainer):
        """Takes the prompt/chosen/rejected ids from ftflow's cache as they are."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    method = cfg["method"]
    return PretokenizedDPOTrainer(
        model=_load_model(parent, cfg),
        ref_model=_load_model(parent, cfg),
        args=DPOConfig(**args, beta=method["beta"], loss_type=[method["loss_type"]]),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )


# --------------------------------------------------------------------------- export


def _export(trainer, tokenizer, cfg: dict, final: Path) -> None:
    """Write final/ atomically, with no absolute machine paths inside."""
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    tokenizer.save_pretrained(tmp)
    adapter_config = tmp / "adapter_config.json"
    if adapter_config.exists():
        # PEFT records the base model's path; point it at the run's model name instead,
        # so the adapter loads wherever results/ and resources/ are moved.
        data = json.loads(adapter_config.read_text())
        data["base_model_name_or_path"] = cfg["run"]["model"]
        adapter_config.write_text(json.dumps(data, indent=2) + "\n")
    (tmp / "ftflow.json").write_text(
        json.dumps({"run": cfg["run"], "kind": cfg["method"]["kind"]}, indent=2) + "\n"
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def main(run_config: Path) -> Path:
    run_config = Path(run_config)
    cfg = yaml.safe_load(run_config.read_text())
    run = cfg["run"]
    run_dir = run_config.parent
    model_dir = offline.require_prefetched(
        paths.model_dir(run["model"]), f"model {run['model']}", str(paths.model_dir(run["model"]))
    )
    manifest = offline.require_prefetched(
        paths.prepared(run["model"], run["dataset"]),
        f"dataset {run['dataset']} (prepared for {run['model']})",
        str(paths.prepared(run["model"], run["dataset"])),
    )
    parent = None
    if "parent" in cfg:
        p = cfg["parent"]
        parent = paths.final_dir(p["model"], p["method"], p["dataset"], p["seed"])
        offline.require_prefetched(parent, "parent SFT model", str(parent))

    checkpoints = run_dir / "checkpoints"
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        check_claimed(run_config)  # the train rule claims them before starting processes
    except StaleCheckpointsError:
        if world_size > 1:
            raise
        print(f"[ftflow] {claim(run_config)}", flush=True)  # started by hand: claim here
    print(
        f"[ftflow] rank {rank} of {world_size}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
        f"SLURM_JOB_ID={os.environ.get('SLURM_JOB_ID', 'none')}",
        flush=True,
    )

    # ---- Resume --------------------------------------------------------------------
    resume = None
    complete = complete_checkpoints(checkpoints)
    if rank == 0:
        for gone in discard_incomplete(checkpoints):
            print(f"[ftflow] discarded incomplete checkpoint {gone.name}", flush=True)
    if complete:
        resume = complete[-1]
        print(f"[ftflow] resuming from {resume.name} (step {step(resume)})", flush=True)
        if rank == 0:
            truncate_metrics(checkpoints / METRICS_PARTIAL, step(resume))
    elif rank == 0:
        (checkpoints / METRICS_PARTIAL).unlink(missing_ok=True)
        print("[ftflow] starting from scratch", flush=True)

    # ---- Train ---------------------------------------------------------------------
    from transformers import set_seed

    set_seed(run["seed"])
    trainer = build_trainer(cfg, run_dir, model_dir, manifest, parent)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    # ---- Export --------------------------------------------------------------------
    final = run_dir / "final"
    if trainer.is_world_process_zero():
        _export(trainer, trainer.processing_class, cfg, final)
        partial = checkpoints / METRICS_PARTIAL
        tmp = run_dir / "metrics.jsonl.tmp"
        shutil.copyfile(partial, tmp)
        os.replace(tmp, run_dir / "metrics.jsonl")
        mark_finished(checkpoints)
        print(f"[ftflow] wrote {final} after {trainer.state.global_step} steps", flush=True)
    return final


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_config", type=Path, help="the run's run.yaml")
    args = parser.parse_args(argv)
    offline.apply_offline(paths.RESOURCES)
    try:
        main(args.run_config)
    except (NonFiniteLossError, StaleCheckpointsError, offline.NotPrefetchedError) as error:
        print(f"[ftflow] error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
