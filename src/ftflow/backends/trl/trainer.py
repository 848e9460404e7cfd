"""Build TRL's SFTTrainer / DPOTrainer from the backend's rendered settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftflow import offline, paths
from ftflow.backends.trl.callbacks import CompleteMarker, MetricsCallback, TimeBudget
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
    train_dataset, _info = load_entry(manifest)
    callbacks = [MetricsCallback(metrics_partial, spec.method.kind), CompleteMarker()]
    if spec.method.max_minutes:  # a sanity stage's time budget
        callbacks.append(TimeBudget(spec.method.max_minutes))
    args = rendered["trainer"]

    if spec.method.kind in ("sft", "lora"):
        peft_config = None
        if "peft" in rendered:
            from peft import LoraConfig

            peft_config = LoraConfig(**rendered["peft"])
        return SFTTrainer(
            model=_load_model(rendered["model"]),
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

    return PretokenizedDPOTrainer(
        model=_load_model(rendered["model"]),
        ref_model=_load_model(rendered["model"]),
        args=DPOConfig(**args, **rendered["dpo"]),
        train_dataset=train_dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
