"""The DeepSpeed and FSDP settings of a TRL run, derived from its resolved config.

Nothing here is a static file: the ``render_launch_file`` rule writes what these functions
return into the run's ``launch/`` folder (``deepspeed.json``, ``fsdp.json``), a declared
input of the ``train`` job, which hands its path to the Trainer. The batch fields are
the run's derived batch, not ``"auto"``: transformers checks them against its own
arguments and refuses a mismatch, so the file says exactly what the job does. What
depends on the model's size (bucket sizes) stays ``"auto"`` for transformers to fill in.
"""

from __future__ import annotations

from typing import Any

from ftflow.spec import RunSpec

#: The file each distributed mode renders into ``launch/``.
FILES = {"deepspeed_zero3": "deepspeed.json", "fsdp": "fsdp.json"}


def launch_file(distributed: str) -> str | None:
    return FILES.get(distributed)


def deepspeed_config(spec: RunSpec) -> dict[str, Any]:
    """ZeRO stage 3 for ``spec``: sharded parameters, gradients and optimizer states.

    ``stage3_gather_16bit_weights_on_model_save`` makes ``save_model`` write the full,
    consolidated weights (without it, ``final/`` would hold empty shards). An offloaded
    optimizer gets DeepSpeed's own AdamW section (its CPU Adam runs the step in CPU
    memory; a client optimizer is refused by DeepSpeed under offload).
    """
    method, batch = spec.method, spec.batch
    settings = method.deepspeed or {}
    zero: dict[str, Any] = {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    config: dict[str, Any] = {
        "zero_optimization": zero,
        "bf16": {"enabled": spec.model.dtype == "bfloat16"},
        "fp16": {"enabled": spec.model.dtype == "float16"},
        "train_micro_batch_size_per_gpu": batch.per_device_batch_size,
        "gradient_accumulation_steps": batch.gradient_accumulation_steps,
        "train_batch_size": batch.global_batch_size,
        "gradient_clipping": method.max_grad_norm,
        "steps_per_print": 1_000_000,  # ftflow logs the metrics itself
        "wall_clock_breakdown": False,
    }
    if settings.get("offload_optimizer", "none") != "none":
        zero["offload_optimizer"] = {"device": settings["offload_optimizer"], "pin_memory": True}
        config["optimizer"] = {
            "type": "AdamW",
            "params": {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"},
        }
    if settings.get("offload_params", "none") != "none":
        zero["offload_param"] = {"device": settings["offload_params"], "pin_memory": True}
    return config


def fsdp_config(spec: RunSpec) -> dict[str, Any]:
    """FSDP2 for ``spec``: one unit per decoder layer, sharded checkpoints.

    ``TRANSFORMER_BASED_WRAP`` without a class list wraps the model's own decoder-layer
    class (``_no_split_modules``). Checkpoints are sharded state dicts (each rank writes
    its shard; a resumed job reads them back); the export gathers a full state dict
    (:func:`ftflow.backends.trl.TrlBackend.export`).
    """
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": True,
        "state_dict_type": "SHARDED_STATE_DICT",
        "cpu_ram_efficient_loading": False,
        "activation_checkpointing": spec.method.gradient_checkpointing,
    }


def render(spec: RunSpec) -> dict[str, dict[str, Any]]:
    """``{file name: settings}`` of every launch file ``spec`` needs (none for DDP)."""
    if spec.method.distributed == "deepspeed_zero3":
        return {FILES["deepspeed_zero3"]: deepspeed_config(spec)}
    if spec.method.distributed == "fsdp":
        return {FILES["fsdp"]: fsdp_config(spec)}
    return {}
