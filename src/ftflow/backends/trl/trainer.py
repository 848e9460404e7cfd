"""Build TRL's SFTTrainer / DPOTrainer from the backend's rendered settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftflow import backends, offline, paths
from ftflow.backends.trl import ref_logps
from ftflow.backends.trl.callbacks import CompleteMarker, MetricsCallback, StopOnSignal, TimeBudget
from ftflow.spec import RunSpec
from ftflow.torchutil import torch_dtype


def _load_model(settings: dict[str, Any]):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        settings["path"],
        dtype=torch_dtype(settings["dtype"]),
        attn_implementation=settings["attn_implementation"],
        trust_remote_code=settings["trust_remote_code"],
    )


def require_kernels(spec: RunSpec, model) -> None:
    """Refuse, at job start, what the method asks for and this machine or model cannot do.

    Both would otherwise be dropped without a word: transformers' Trainer applies Liger to
    the model types Liger knows and only logs for the others, and transformers' pure-torch
    Mamba path ignores the packed-sequence boundaries (its ``seq_idx``), so a Mamba layer's
    state would run on from one packed record into the next. Raises ConfigError.
    """
    import importlib.util

    import torch

    from ftflow.config import ConfigError

    where = f"methods.{spec.run.method}"
    if spec.method.liger_kernel:
        if not torch.cuda.is_available():
            raise ConfigError(
                f"config key {where}.liger_kernel: no CUDA GPU on this machine, and Liger's "
                "kernels are Triton kernels for CUDA GPUs (allowed here: false)"
            )
        for package in ("liger_kernel", "triton"):
            if importlib.util.find_spec(package) is None:
                raise ConfigError(
                    f"config key {where}.liger_kernel: the {package} package is not installed "
                    "in this job's environment (pip install liger-kernel==0.8.5, as pinned in "
                    "envs/trl.yaml; allowed without it: false)"
                )
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

        model_type = model.config.model_type
        if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
            raise ConfigError(
                f"config key {where}.liger_kernel: Liger has no kernels for model type "
                f"{model_type!r} of model {spec.run.model} (allowed for it: false)"
            )
    if spec.method.packing != "none" and has_mamba_layers(model):
        missing = [p for p in ("mamba_ssm", "causal_conv1d") if importlib.util.find_spec(p) is None]
        if missing or not torch.cuda.is_available():
            why = f"{', '.join(missing)} not importable" if missing else "no CUDA GPU"
            raise ConfigError(
                f"config key {where}.packing: {spec.method.packing} packs records into one row, "
                f"and model {spec.run.model} has Mamba layers, whose pure-torch path carries "
                "its state across packed records; the mamba_ssm and causal_conv1d CUDA kernels "
                f"honour the boundaries ({why}; list them in models.{spec.run.model}."
                "needs_kernels and train on GPUs, or allowed here: none)"
            )


def has_mamba_layers(model) -> bool:
    return any("Mamba" in type(module).__name__ for module in model.modules())


def build_trainer(spec: RunSpec, rendered: dict[str, Any], metrics_partial: Path):
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from ftflow.prepare import load_entry

    run = spec.run
    model_dir = offline.require_prefetched(
        paths.model_dir(run.model), f"model {run.model}", str(paths.model_dir(run.model))
    )
    manifest = offline.require_prefetched(
        paths.prepared(run.model, run.dataset),
        f"dataset {run.dataset} (prepared for {run.model})",
        str(paths.prepared(run.model, run.dataset)),
    )
    if spec.parent_paths is not None:
        offline.require_prefetched(
            spec.parent_paths.final, "parent SFT model", str(spec.parent_paths.final)
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_dataset, tokenised = load_entry(manifest)
    callbacks = [MetricsCallback(metrics_partial, spec.method.kind), StopOnSignal()]
    if spec.method.max_minutes:  # a sanity stage's time budget
        callbacks.append(TimeBudget(spec.method.max_minutes))
    keep = rendered["retention"]["save_total_limit"]
    backend = backends.get(spec.model.backend)
    callbacks.append(CompleteMarker(spec.paths.checkpoints, keep, backend))
    args = rendered["trainer"]

    if spec.method.kind in ("sft", "lora"):
        peft_config = None
        if "peft" in rendered:
            from peft import LoraConfig

            peft_config = LoraConfig(**rendered["peft"])
        model = _load_model(rendered["model"])
        require_kernels(spec, model)
        return SFTTrainer(
            model=model,
            args=SFTConfig(**args, dataset_num_proc=None),
            train_dataset=train_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )

    # DPO: the policy starts from the parent SFT model, which is also the reference.
    # Precomputed, the reference's log-probs come from the policy itself before its first
    # step (TRL, with no ref_model) or from ftflow's cache: no second model is loaded.
    precompute = rendered["dpo"]["precompute_ref_log_probs"]

    class PretokenizedDPOTrainer(DPOTrainer):
        """Takes the prompt/chosen/rejected ids from ftflow's cache as they are, and the
        reference log-probs from :mod:`~ftflow.backends.trl.ref_logps` when precomputed."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            reference = Path(rendered["model"]["path"])
            return ref_logps.precomputed(
                self, dataset, batch_size, reference, tokenised["key"], rendered["model"]
            )

    model = _load_model(rendered["model"])
    require_kernels(spec, model)
    return PretokenizedDPOTrainer(
        model=model,
        ref_model=None if precompute else _load_model(rendered["model"]),
        args=DPOConfig(**args, **rendered["dpo"]),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
