"""The NeMo Automodel backend: full SFT and LoRA with NVIDIA NeMo Automodel's recipe.

Supports ``sft`` and ``lora`` methods; one process, DDP and FSDP2 (``distributed: fsdp``,
also on CPUs, where it really shards over gloo), launched like TRL (``torchrun``, one
launcher per node through ``srun``). What it cannot honour is refused at config time,
naming the key: DPO, DeepSpeed, 8-bit optimizers, fractional epochs or a warmup ratio
without ``max_steps``, activation checkpointing outside FSDP2, packing, Liger kernels.

Everything Automodel is told is in one per-run YAML, rendered from ``run.yaml`` into
``results/<run>/launch/automodel.yaml`` (the ``render_launch_file`` rule; a declared input
of ``train``; never edited, never overridden on a command line). Its data is ftflow's
prepared cache (:mod:`~ftflow.backends.automodel.data`), so both backends train on the
same records, tokens and labels.

Checkpoints are Automodel's ``checkpoints/epoch_{E}_step_{S}/`` (``S`` counted from 0, so
the folder holds the state after ``S + 1`` steps), complete once ftflow has marked them
after Automodel published them; ftflow then keeps the newest ``save_total_limit`` complete
ones (:func:`ftflow.checkpoints.retain`). Metrics come from its ``checkpoints/training.jsonl``.
``final/`` is the last checkpoint's consolidated Hugging Face model (full SFT) or its PEFT
adapter (LoRA). On a machine without CUDA, :mod:`~ftflow.backends.automodel.cpu_shim`
makes the few CUDA-only calls safe; on a GPU nothing is patched.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftflow import interrupt, paths
from ftflow import launch as launchlib
from ftflow.backends import COMPLETE_MARKER, Checkpoint, Launch
from ftflow.files import iter_jsonl_lines, read_jsonl
from ftflow.paths import Run, RunPaths
from ftflow.spec import RunSpec

LAUNCH_FILE = "automodel.yaml"
TRAINING_LOG = "training.jsonl"  # Automodel's own, inside checkpoints/
KINDS = ("sft", "lora")
DISTRIBUTED = {"none": "ddp", "ddp": "ddp", "fsdp": "fsdp2"}
OPTIMIZERS = {
    "adamw_torch": {"_target_": "torch.optim.AdamW"},
    "adamw_torch_fused": {"_target_": "torch.optim.AdamW", "fused": True},
    "sgd": {"_target_": "torch.optim.SGD"},
}
DECAY = {"constant": "constant", "linear": "linear", "cosine": "cosine"}
_CHECKPOINT = re.compile(r"epoch_(\d+)_step_(\d+)")
#: Automodel's own files that final/ does not need.
SKIPPED_IN_FINAL = ("automodel_peft_config.json",)
#: What ``target_modules: all-linear`` leaves out (Automodel's module patterns).
ALL_LINEAR_EXCEPT = ("lm_head", "*.lm_head", "*.out_proj")


def _refuse(where: str, key: str, message: str):
    from ftflow.config import ConfigError

    raise ConfigError(f"config key {where}.{key}: {message}")


class AutomodelBackend:
    name = "automodel"
    module = "ftflow.train"
    conda_env = "envs/automodel.yaml"

    # ---------------------------------------------------------------- config time

    def validate_method(self, where: str, method: Mapping[str, Any]) -> None:
        if method["kind"] not in KINDS:
            _refuse(
                where,
                "kind",
                f"{method['kind']} is not trained by the automodel backend "
                f"(allowed: {', '.join(KINDS)}; DPO runs on backend trl)",
            )
        if method["distributed"] not in DISTRIBUTED:
            _refuse(
                where,
                "distributed",
                f"{method['distributed']} is not available with the "
                f"automodel backend, which shards with FSDP2 (allowed: "
                f"{', '.join(DISTRIBUTED)})",
            )
        if method.get("max_minutes"):
            _refuse(
                where,
                "max_minutes",
                "a time budget is not available with the automodel backend, whose "
                "recipe stops on a step count only (use max_steps)",
            )
        if method["optimizer"] not in OPTIMIZERS:
            _refuse(
                where,
                "optimizer",
                f"{method['optimizer']} is not available with the "
                f"automodel backend (allowed: {', '.join(OPTIMIZERS)})",
            )
        if not method.get("max_steps") and float(method["epochs"]) != int(method["epochs"]):
            _refuse(
                where,
                "epochs",
                f"{method['epochs']}: Automodel trains whole epochs; set "
                "a whole number, or max_steps",
            )
        if method["warmup_ratio"] and not method.get("max_steps"):
            _refuse(
                where,
                "warmup_ratio",
                "Automodel warms up for a number of steps, which "
                f"ftflow derives from max_steps; set {where}.max_steps too",
            )
        if method.get("packing", "none") != "none":
            _refuse(
                where,
                "packing",
                f"{method['packing']} is not available with the automodel backend: it trains "
                "Hugging Face's model code (force_hf), whose pure-torch Mamba path carries its "
                "state across packed records, and ftflow does not map Automodel's own packed "
                "sequences (allowed: none)",
            )
        if method.get("liger_kernel"):
            _refuse(
                where,
                "liger_kernel",
                "Liger's kernels are applied by TRL's trainers; the automodel backend does not "
                "apply them (allowed: false)",
            )
        if method["gradient_checkpointing"] and method["distributed"] != "fsdp":
            _refuse(
                where,
                "gradient_checkpointing",
                "Automodel checkpoints activations under "
                f"FSDP2 only (set {where}.distributed: fsdp, or gradient_checkpointing: "
                "false)",
            )

    def launch(self, method: Mapping[str, Any], run: Run, stage: str | None = None) -> Launch:
        return Launch(
            command=launchlib.launch_command(method, self.module),
            conda_env=self.conda_env,
            inputs=(str(RunPaths(run, stage).launch_file(LAUNCH_FILE)),),
        )

    # ------------------------------------------------------------------ checkpoints

    def checkpoints(self, folder: Path) -> list[Checkpoint]:
        """``epoch_E_step_S`` folders (the state after ``S + 1`` steps), oldest first."""
        found = []
        if Path(folder).is_dir():
            for path in Path(folder).iterdir():
                match = _CHECKPOINT.fullmatch(path.name)
                if match and path.is_dir() and not path.is_symlink():
                    step = int(match.group(2)) + 1
                    found.append(Checkpoint(path, step, (path / COMPLETE_MARKER).exists()))
        return sorted(found, key=lambda c: c.step)

    # ----------------------------------------------------------------------- render

    def render(self, spec: RunSpec) -> dict[str, Any]:
        """The Automodel recipe YAML of ``spec`` (as ``launch_files``)."""
        return {
            "launch_files": {LAUNCH_FILE: automodel_config(spec)},
            "retention": {"save_total_limit": spec.method.save_total_limit},
        }

    # ------------------------------------------------------------------------ train

    def train(self, spec: RunSpec, resume: Checkpoint | None):
        from ftflow.backends.automodel.recipe import run

        if _is_main():
            _keep_metrics_until(spec.paths.checkpoints / TRAINING_LOG, resume.step if resume else 0)
        return run(
            spec.paths.launch_file(LAUNCH_FILE),
            resume.path if resume else None,
            keep=spec.method.save_total_limit,
        )

    def export(self, trained, spec: RunSpec, dest: Path) -> None:
        """The last checkpoint's consolidated model, or its adapter, into ``dest``."""
        if not _is_main():
            return
        complete = [c for c in self.checkpoints(spec.paths.checkpoints) if c.complete]
        if not complete:
            raise RuntimeError(f"{spec.paths.checkpoints}: Automodel wrote no complete checkpoint")
        model = complete[-1].path / "model"
        source = model / "consolidated" if spec.method.kind == "sft" else model
        wanted = "config.json" if spec.method.kind == "sft" else "adapter_config.json"
        if not (source / wanted).is_file():
            raise RuntimeError(f"{source}: no {wanted}; Automodel did not export the model")
        shards = sorted(source.glob("model-*-of-*.safetensors"))
        single = len(shards) == 1  # one shard: the plain model.safetensors, as TRL writes
        for item in source.iterdir():
            if not item.is_file() or item.name in SKIPPED_IN_FINAL:
                continue
            if single and item.name == "model.safetensors.index.json":
                continue
            name = "model.safetensors" if single and item == shards[0] else item.name
            shutil.copy2(item, dest / name)

    def metrics(self, spec: RunSpec) -> list[dict[str, Any]]:
        """Contract rows from Automodel's ``training.jsonl`` (steps counted from 1)."""
        log = spec.paths.checkpoints / TRAINING_LOG
        by_step: dict[int, dict] = {}
        for record in read_jsonl(log) if log.exists() else []:
            by_step[int(record["step"]) + 1] = record  # a step logged twice: the last wins
        every = spec.method.logging_steps
        return [
            {
                "step": step,
                "epoch": record.get("epoch"),
                "loss": record["loss"],
                "learning_rate": record.get("lr"),
                "grad_norm": record.get("grad_norm"),
                "tokens_per_second": record.get("tps"),
                "mfu": record.get("mfu"),
                "memory_gib": record.get("mem"),
            }
            for step, record in sorted(by_step.items())
            if step % every == 0
        ]


def _is_main() -> bool:
    from ftflow.lifecycle import rank

    return rank()[0] == 0


def _keep_metrics_until(log: Path, last_step: int) -> None:
    """Cut Automodel's training log after ``last_step`` (0: start afresh)."""
    if not log.exists():
        return
    if last_step == 0:
        log.unlink()
        return
    kept = [
        line
        for _, line in iter_jsonl_lines(log.read_text())
        if int(json.loads(line)["step"]) + 1 <= last_step
    ]
    log.write_text("".join(line + "\n" for line in kept))


# ------------------------------------------------------------------------ the YAML


def automodel_config(spec: RunSpec) -> dict[str, Any]:
    """Everything Automodel is told for ``spec``, derived from its resolved config."""
    method, batch, model = spec.method, spec.batch, spec.model
    gpus = (method.resources or {}).get("gpus_per_node", 0)
    distributed: dict[str, Any] = {
        "strategy": DISTRIBUTED[method.distributed],
        "dp_size": None,
        "tp_size": 1,
        "cp_size": 1,
        "pp_size": 1,
    }
    if distributed["strategy"] == "fsdp2":
        # Automodel's default keeps parameters in bf16; the model config's dtype decides.
        distributed["mp_policy"] = {
            "_target_": "torch.distributed.fsdp.MixedPrecisionPolicy",
            "param_dtype": model.dtype,
            "reduce_dtype": "float32",
            "output_dtype": None,
            "cast_forward_inputs": model.dtype != "float32",
        }
        distributed["activation_checkpointing"] = method.gradient_checkpointing
    steps: dict[str, Any] = {
        "global_batch_size": batch.global_batch_size,
        "local_batch_size": batch.per_device_batch_size,
        "num_epochs": int(method.epochs),
        "ckpt_every_steps": method.save_steps,
        "val_every_steps": None,
        # SLURM's warning before the time limit, and preemption (ftflow.interrupt).
        "preemption_signal": [sig.name for sig in interrupt.SIGNALS],
    }
    if method.max_steps:
        steps["max_steps"] = method.max_steps
    config: dict[str, Any] = {
        "recipe": "TrainFinetuneRecipeForNextTokenPrediction",
        "seed": spec.run.seed,
        "dist_env": {"backend": "nccl" if gpus else "gloo", "timeout_minutes": 30},
        "model": {
            "_target_": "nemo_automodel.NeMoAutoModelForCausalLM.from_pretrained",
            "pretrained_model_name_or_path": str(paths.model_dir(spec.run.model)),
            "torch_dtype": model.dtype,
            "attn_implementation": model.attn_implementation,
            "trust_remote_code": model.trust_remote_code,
            # the Hugging Face implementation (Nemotron-H's pure-torch Mamba path when the
            # CUDA kernels are absent), not Automodel's own model classes
            "force_hf": True,
            # Automodel patches Liger's Triton kernels into the model whenever liger-kernel
            # is installed (and they fail without a GPU); `liger_kernel` is a method option
            # this backend refuses, so they are never on behind the user's back.
            "use_liger_kernel": False,
        },
        "distributed": distributed,
        "step_scheduler": steps,
        "loss_fn": {"_target_": "nemo_automodel.components.loss.masked_ce.MaskedCrossEntropy"},
        "dataset": {
            "_target_": "ftflow.backends.automodel.data.prepared_dataset",
            "manifest": str(paths.prepared(spec.run.model, spec.run.dataset)),
        },
        "dataloader": {
            "_target_": "torchdata.stateful_dataloader.StatefulDataLoader",
            "collate_fn": "nemo_automodel.components.datasets.utils.default_collater",
            "shuffle": True,  # seeded by `seed`
        },
        "optimizer": {
            **OPTIMIZERS[method.optimizer],
            "lr": method.learning_rate,
            "weight_decay": method.weight_decay,
        },
        "lr_scheduler": _lr_schedule(method),
        "clip_grad_norm": {"max_norm": method.max_grad_norm},
        "checkpoint": {
            "enabled": True,
            "checkpoint_dir": str(spec.paths.checkpoints),
            "model_save_format": "safetensors",
            "save_consolidated": "final" if method.kind == "sft" else False,
            # ftflow keeps the newest save_total_limit complete checkpoints itself, after
            # marking one (recipe.py → checkpoints.retain): Automodel prunes before ftflow
            # marks, so with a limit of 1 a kill in between would leave none to resume.
            "max_recent_checkpoints": None,
        },
    }
    if method.optimizer != "sgd":
        config["optimizer"].update(betas=[0.9, 0.999], eps=1e-8)
    if method.kind == "lora":
        config["peft"] = _peft(method.lora or {})
    return config


def _lr_schedule(method) -> dict[str, Any]:
    lr = method.learning_rate
    warmup = round(method.warmup_ratio * method.max_steps) if method.max_steps else 0
    if method.lr_scheduler == "cosine_with_min_lr":
        style, min_lr = "cosine", lr * method.min_lr_rate
    else:
        style = DECAY[method.lr_scheduler]
        min_lr = lr if style == "constant" else 0.0
    return {
        "lr_decay_style": style,
        "lr_warmup_steps": warmup,
        "init_lr": 0.0 if warmup else lr,
        "max_lr": lr,
        "min_lr": min_lr,
    }


def _peft(lora: Mapping[str, Any]) -> dict[str, Any]:
    peft: dict[str, Any] = {
        "_target_": "nemo_automodel.components._peft.lora.PeftConfig",
        "dim": lora["r"],
        "alpha": lora["alpha"],
        "dropout": lora["dropout"],
        "use_triton": False,
    }
    targets = lora["target_modules"]
    if targets == "all-linear":
        # PEFT's all-linear: every linear layer but the output head (Automodel's own
        # match_all_linear adapts lm_head too) — and not a Mamba mixer's out_proj, where
        # PEFT refuses to load a LoRA (so the adapter would be unusable for evaluation)
        peft["exclude_modules"] = list(ALL_LINEAR_EXCEPT)
    else:
        names = [targets] if isinstance(targets, str) else list(targets)
        peft["target_modules"] = [f"*.{name}" for name in names]
    return peft
