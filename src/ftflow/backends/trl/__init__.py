"""The TRL backend: full SFT, LoRA (PEFT) and DPO with TRL's trainers.

Supports: ``sft``, ``lora`` and ``dpo`` methods; one process, and DDP, DeepSpeed ZeRO-3 and
FSDP2 under ``torchrun``. The DeepSpeed / FSDP settings are derived from the run
(:mod:`~ftflow.backends.trl.distributed`) and rendered into the run's ``launch/`` folder,
a declared input of the ``train`` rule; the Trainer reads that file. Assumes the dataset
was prepared by :mod:`ftflow.prepare` for the run's model (DPO data arrives tokenised). Raises
:class:`ftflow.config.ConfigError` at config time for what it cannot honour. ``packing``
(:func:`packing_args`) and ``liger_kernel`` (:data:`LIGER_KERNELS`) map to TRL's settings;
what this machine or model cannot run is refused at job start
(:func:`~ftflow.backends.trl.trainer.require_kernels`), never dropped.

Checkpoints are the Trainer's ``checkpoints/checkpoint-N``; one is complete once
:class:`~ftflow.backends.trl.callbacks.CompleteMarker` has marked it after the save, and
then keeps the newest ``save_total_limit`` complete ones (:func:`ftflow.checkpoints.retain`).
Metrics are written live as contract rows (:class:`~.callbacks.MetricsCallback`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ftflow import interrupt, paths
from ftflow import launch as launchlib
from ftflow.backends import COMPLETE_MARKER, Checkpoint, Launch
from ftflow.backends.trl import distributed as dist
from ftflow.checkpoints import METRICS_PARTIAL
from ftflow.files import read_jsonl
from ftflow.paths import Run, RunPaths
from ftflow.spec import RunSpec

#: DeepSpeed JIT-compiles a C++ op at its first distributed start (30-60 s); the cache
#: lives with the workflow's resources, so later jobs load it instead of compiling again.
TORCH_EXTENSIONS_DIR = paths.RESOURCES / "cache" / "torch_extensions"


#: What ``liger_kernel: true`` applies. The loss stays TRL's own chunked fused LM head
#: (its trainers refuse Liger's fused linear cross-entropy, which replaces the forward).
LIGER_KERNELS = {
    "rope": True,
    "rms_norm": True,
    "swiglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}


def packing_args(packing: str) -> dict[str, Any]:
    """The SFTConfig settings of a method's ``packing``.

    ``padding_free`` concatenates each micro-batch's records into one row (TRL's collator,
    position ids restarting per record); ``max_length`` is lifted because TRL enforces it
    only by packing, and ``prepare_dataset`` has already truncated every record to the
    dataset's ``max_length``. ``bfd`` packs records into rows of ``max_length`` tokens
    (padding-free too). Without pad tokens every token counts towards tokens/s.
    """
    if packing == "padding_free":
        return {"padding_free": True, "max_length": None, "include_num_input_tokens_seen": "all"}
    if packing == "bfd":
        return {"packing": True, "packing_strategy": "bfd", "include_num_input_tokens_seen": "all"}
    return {}


class TrlBackend:
    name = "trl"
    module = "ftflow.train"
    conda_env = "envs/trl.yaml"

    # ---------------------------------------------------------------- config time

    def validate_method(self, where: str, method: Mapping[str, Any]) -> None:
        from ftflow.config import ConfigError

        res = method.get("resources") or {}
        if method["distributed"] == "fsdp" and not res.get("gpus_per_node"):
            raise ConfigError(
                f"config key {where}.distributed: fsdp needs GPUs (set "
                f"{where}.resources.gpus_per_node); on a CPU the Trainer silently runs FSDP "
                "as plain DDP (allowed on a CPU: none, ddp, deepspeed_zero3)"
            )
        if method.get("packing", "none") != "none" and method["kind"] == "dpo":
            raise ConfigError(
                f"config key {where}.packing: {method['packing']} packs SFT records; TRL's "
                "DPOTrainer turns padding-free off itself (TRL 1.16) and does not pack "
                "preference pairs (allowed for a dpo method: none)"
            )
        if method.get("liger_kernel") and not res.get("gpus_per_node"):
            raise ConfigError(
                f"config key {where}.liger_kernel: Liger's kernels are Triton kernels for CUDA "
                f"GPUs, and this method runs on CPUs (set {where}.resources.gpus_per_node, or "
                "allowed on a CPU: false)"
            )
        for key, value in (method.get("deepspeed") or {}).items():
            if value != "none" and not res.get("gpus_per_node"):
                raise ConfigError(
                    f"config key {where}.deepspeed.{key}: {value} offload moves state out of "
                    f"GPU memory, and this method runs on CPUs (set "
                    f"{where}.resources.gpus_per_node, or allowed on a CPU: none)"
                )

    def launch(self, method: Mapping[str, Any], run: Run, stage: str | None = None) -> Launch:
        name = dist.launch_file(method.get("distributed", "none"))
        env = {}
        if method.get("distributed") == "deepspeed_zero3":
            env["TORCH_EXTENSIONS_DIR"] = str(TORCH_EXTENSIONS_DIR)
        return Launch(
            command=launchlib.launch_command(method, self.module),
            env=env,
            conda_env=self.conda_env,
            inputs=(str(RunPaths(run, stage).launch_file(name)),) if name else (),
        )

    # ------------------------------------------------------------------ checkpoints

    def checkpoints(self, folder: Path) -> list[Checkpoint]:
        """``checkpoint-N`` folders, oldest first."""
        found = []
        if Path(folder).is_dir():
            for path in Path(folder).iterdir():
                match = re.fullmatch(r"checkpoint-(\d+)", path.name)
                if match and path.is_dir():
                    complete = (path / COMPLETE_MARKER).exists()
                    found.append(Checkpoint(path, int(match.group(1)), complete))
        return sorted(found, key=lambda c: c.step)

    # ----------------------------------------------------------------------- render

    def render(self, spec: RunSpec) -> dict[str, Any]:
        """Everything this backend hands to transformers / TRL / PEFT for ``spec``."""
        import torch

        method, batch, model = spec.method, spec.batch, spec.model
        args: dict[str, Any] = {
            "output_dir": str(spec.paths.checkpoints),
            "seed": spec.run.seed,
            "data_seed": spec.run.seed,
            "per_device_train_batch_size": batch.per_device_batch_size,
            "gradient_accumulation_steps": batch.gradient_accumulation_steps,
            "learning_rate": method.learning_rate,
            "lr_scheduler_type": method.lr_scheduler,
            "warmup_steps": method.warmup_ratio,  # a float < 1 is a ratio
            "weight_decay": method.weight_decay,
            "max_grad_norm": method.max_grad_norm,
            "num_train_epochs": method.epochs,
            "max_steps": method.max_steps or -1,
            "optim": method.optimizer,
            "gradient_checkpointing": method.gradient_checkpointing,
            "logging_steps": method.logging_steps,
            "logging_nan_inf_filter": False,  # report NaN/Inf as it is, so we can stop on it
            "save_strategy": "steps",
            "save_steps": method.save_steps,
            # ftflow keeps the newest save_total_limit complete checkpoints itself
            # (CompleteMarker → checkpoints.retain): the Trainer's own rotation runs before
            # the new checkpoint is marked, so with a limit of 1 it deletes the only
            # complete checkpoint a killed job could resume from.
            "save_total_limit": None,
            # TRL defaults bf16 to True even on a CPU; precision follows the model config.
            "bf16": model.dtype == "bfloat16",
            "fp16": model.dtype == "float16",
            "use_cpu": not torch.cuda.is_available(),
            "report_to": "none",
            "include_num_input_tokens_seen": "non_padding",
            "dataloader_num_workers": 0,
            "max_length": spec.dataset.max_length,
            "disable_tqdm": True,
        }
        if method.lr_scheduler == "cosine_with_min_lr":
            args["lr_scheduler_kwargs"] = {"min_lr_rate": method.min_lr_rate}
        args.update(packing_args(method.packing))
        if method.liger_kernel:
            args["use_liger_kernel"] = True
            args["liger_kernel_config"] = dict(LIGER_KERNELS)
        launch_files = dist.render(spec)
        if method.distributed == "deepspeed_zero3":
            args["deepspeed"] = str(spec.paths.launch_file(dist.FILES["deepspeed_zero3"]))
        elif method.distributed == "fsdp":
            args["fsdp"] = "full_shard auto_wrap"
            args["fsdp_config"] = str(spec.paths.launch_file(dist.FILES["fsdp"]))
            # FSDP checkpoints activations itself (fsdp.json); both at once are refused.
            args["gradient_checkpointing"] = False
        rendered: dict[str, Any] = {
            "trainer": args,
            "launch_files": launch_files,
            "retention": {"save_total_limit": method.save_total_limit},
            "model": {
                "path": str(paths.final_dir(*_fields(spec.parent)))
                if spec.parent
                else str(paths.model_dir(spec.run.model)),
                "dtype": model.dtype,
                "attn_implementation": model.attn_implementation,
                "trust_remote_code": model.trust_remote_code,
            },
        }
        if method.kind == "lora":
            lora = method.lora or {}
            rendered["peft"] = {
                "r": lora["r"],
                "lora_alpha": lora["alpha"],
                "lora_dropout": lora["dropout"],
                "target_modules": lora["target_modules"],
                "task_type": "CAUSAL_LM",
            }
        if method.kind == "dpo":
            rendered["dpo"] = {
                "beta": method.beta,
                "loss_type": [method.loss_type],
                "precompute_ref_log_probs": method.precompute_ref_log_probs,
            }
        return rendered

    # ------------------------------------------------------------------------ train

    def train(self, spec: RunSpec, resume: Checkpoint | None):
        from ftflow.backends.trl.callbacks import StopOnSignal
        from ftflow.backends.trl.trainer import build_trainer

        trainer = build_trainer(spec, self.render(spec), spec.paths.checkpoints / METRICS_PARTIAL)
        print(f"[ftflow] trainer: {sharding(trainer)}", flush=True)
        trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
        stop = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnSignal))
        if stop.stopped_at is not None:
            raise interrupt.Interrupted(
                f"stopped by {interrupt.requested()} after step {stop.stopped_at}: "
                f"checkpoint-{stop.stopped_at} is complete; the retry resumes from it"
            )
        return trainer

    def export(self, trained, spec: RunSpec, dest: Path) -> None:
        """Full weights (or the adapter) into ``dest``.

        Called on every process: under DeepSpeed/FSDP, gathering the shards is collective.
        FSDP checkpoints are sharded; the export asks for the full state dict instead.
        """
        if trained.is_fsdp_enabled:
            trained.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trained.save_model(str(dest))
        if trained.args.should_save:
            trained.processing_class.save_pretrained(dest)

    def metrics(self, spec: RunSpec) -> list[dict[str, Any]]:
        partial = spec.paths.checkpoints / METRICS_PARTIAL
        return read_jsonl(partial) if partial.exists() else []


def sharding(trainer) -> str:
    """What the Trainer really does, not what was asked (``2 processes, deepspeed zero3``)."""
    mode = "no sharding"
    if trainer.is_deepspeed_enabled:
        mode = f"deepspeed zero{trainer.accelerator.deepspeed_plugin.zero_stage}"
    elif trainer.is_fsdp_enabled:
        mode = f"fsdp{trainer.accelerator.state.fsdp_plugin.fsdp_version}"
    return f"{trainer.args.world_size} process(es), {mode}"


def _fields(run) -> tuple:
    return (run.model, run.method, run.dataset, run.seed)
