"""Pass 2: what a schema cannot say — names defined, kinds that fit, backends' own checks."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from ftflow import backends
from ftflow.config.errors import BASE_DATASET, BASE_METHOD, ConfigError
from ftflow.config.publish import publish_targets
from ftflow.config.resolve import derive_batch, stage_method, stage_names, stages
from ftflow.config.schema import validate_schema_fragment

# Defaults of the DPO-only method keys (filled in for dpo methods, refused on the others).
DPO_ONLY = {"beta": 0.1, "loss_type": "sigmoid", "precompute_ref_log_probs": True}


def _check_names(kind: str, names: list[str], defined: Mapping, where: str) -> None:
    for name in names:
        if name not in defined:
            raise ConfigError(
                f"config key {where}: {kind} {name!r} is not defined "
                f"(defined {kind}s: {', '.join(sorted(defined)) or 'none'})"
            )


# The tiny-model key each architecture has no use for, and why.
TINY_UNUSED = {
    "llama": ("pattern", "the layer pattern is nemotron_h's; llama takes num_layers"),
    "nemotron_h": ("num_layers", "a nemotron_h has one layer per pattern character"),
}


def _validate_kernels(config: dict) -> None:
    """Needed kernels are defined; a CUDA kernel has archs to compile and GPUs to run on."""
    from ftflow import kernels

    defined = kernels.packages(config)
    archs = (config.get("kernels") or {}).get("cuda_archs")
    for name, model in config["models"].items():
        where = f"models.{name}.needs_kernels"
        _check_names("kernel", model.get("needs_kernels") or [], defined, where)
        cuda = [k for k in model.get("needs_kernels") or [] if defined[k].cuda]
        if not cuda:
            continue
        if not archs:
            raise ConfigError(
                f"config key kernels.cuda_archs: {where} lists CUDA kernels "
                f"({', '.join(cuda)}); name the GPU archs to compile them for, e.g. "
                '["9.0"] for H100/H200 or ["8.0", "9.0"] for A100 and H100'
            )
        for block in config.get("grid", []):
            if name not in block["models"]:
                continue
            for method in block["methods"]:
                gpus = (config["methods"][method].get("resources") or {}).get("gpus_per_node", 0)
                if not gpus:
                    raise ConfigError(
                        f"config key methods.{method}.resources.gpus_per_node: model {name} "
                        f"needs the CUDA kernels {', '.join(cuda)}, which run on GPUs only, "
                        "and this method trains it on CPUs (0 GPUs)"
                    )


def _validate_method(where: str, method: dict, methods: Mapping, datasets: Mapping) -> None:
    """One method's (or one stage's) settings fit together; fills the kind's defaults."""
    kind = method["kind"]
    if kind == "dpo" and "parent" not in method:
        raise ConfigError(f"config key {where}.parent: a dpo method must name its SFT parent")
    if kind != "dpo" and "parent" in method:
        raise ConfigError(f"config key {where}.parent: only a dpo method has a parent")
    for key, default in DPO_ONLY.items():
        if kind == "dpo":
            method.setdefault(key, default)
        elif key in method:
            raise ConfigError(
                f"config key {where}.{key}: only a dpo method takes {key} (this is {kind})"
            )
    if kind == "lora":
        method["lora"] = validate_schema_fragment(method.get("lora", {}), "lora")
    elif "lora" in method:
        raise ConfigError(f"config key {where}.lora: only a lora method takes lora settings")
    if method["distributed"] == "deepspeed_zero3":
        method["deepspeed"] = validate_schema_fragment(method.get("deepspeed", {}), "deepspeed")
    elif "deepspeed" in method:
        raise ConfigError(
            f"config key {where}.deepspeed: only used with distributed deepspeed_zero3 "
            f"(this method's distributed is {method['distributed']})"
        )
    if method["lr_scheduler"] == "cosine_with_min_lr" and "min_lr_rate" not in method:
        raise ConfigError(f"config key {where}.min_lr_rate: required by cosine_with_min_lr")
    if "min_lr_rate" in method and method["lr_scheduler"] != "cosine_with_min_lr":
        raise ConfigError(
            f"config key {where}.min_lr_rate: only used with lr_scheduler cosine_with_min_lr"
        )
    if method["optimizer"] in ("adamw_8bit", "paged_adamw_8bit") and method["distributed"] in (
        "deepspeed_zero3",
        "fsdp",
    ):
        raise ConfigError(
            f"config key {where}.optimizer: {method['optimizer']} cannot be combined with "
            f"distributed {method['distributed']}: bitsandbytes keeps its 8-bit states "
            "outside the sharded optimizer, which DeepSpeed/FSDP cannot partition or "
            "checkpoint (found unusable on GPUs); allowed with it: adamw_torch, "
            "adamw_torch_fused — or use the 8-bit optimizer with distributed none or ddp"
        )
    if kind == "dpo":
        parent = method["parent"]
        _check_names("method", [parent["method"]], methods, f"{where}.parent.method")
        _check_names("dataset", [parent["dataset"]], datasets, f"{where}.parent.dataset")
        if methods[parent["method"]]["kind"] != "sft":
            raise ConfigError(
                f"config key {where}.parent.method: {parent['method']!r} is a "
                f"{methods[parent['method']]['kind']} method (allowed: an sft method)"
            )
    derive_batch(method)  # raises when the global batch cannot be split


def _validate_stages(name: str, method: dict, methods: Mapping, datasets: Mapping) -> None:
    """Each stage is a method of its own (the stage's resources, distributed, optimizer
    and length over the method's settings) and must be valid as one; names are unique."""
    names = stage_names(method)
    for i, stage in enumerate(stages(method)):
        where = f"methods.{name}.stages[{i}]"
        if names.count(stage["name"]) > 1:
            raise ConfigError(f"config key {where}.name: stage {stage['name']!r} appears twice")
        _validate_method(where, stage_method(method, stage), methods, datasets)
    for accepted in method.get("accept_unhealthy") or []:
        _check_names("stage", [accepted], dict.fromkeys(names), f"methods.{name}.accept_unhealthy")


def validate_semantics(config: dict) -> None:
    models, datasets, methods = config["models"], config["datasets"], config["methods"]
    if BASE_METHOD in methods:
        raise ConfigError(
            f"config key methods.{BASE_METHOD}: the name {BASE_METHOD!r} is reserved for "
            "the untrained base model's evaluation row"
        )
    if BASE_DATASET in datasets:
        raise ConfigError(
            f"config key datasets.{BASE_DATASET}: the name {BASE_DATASET!r} is reserved for "
            "the base model's evaluation row"
        )
    _validate_evaluations(config)
    for name, model in models.items():
        tiny = model["source"].get("tiny")
        if tiny:
            _check_names("dataset", tiny["corpus"], datasets, f"models.{name}.source.tiny.corpus")
            for corpus in tiny["corpus"]:
                if "path" not in datasets[corpus]["source"]:
                    raise ConfigError(
                        f"config key models.{name}.source.tiny.corpus: dataset {corpus!r} must "
                        "be a local path (the tokenizer is trained before anything is fetched)"
                    )
            unused = TINY_UNUSED[tiny["architecture"]]
            if unused[0] in tiny:
                raise ConfigError(
                    f"config key models.{name}.source.tiny.{unused[0]}: not used by "
                    f"architecture {tiny['architecture']} ({unused[1]})"
                )
        if model["backend"] not in backends.names():
            raise ConfigError(
                f"config key models.{name}.backend: {model['backend']!r} is not a backend "
                f"(allowed: {', '.join(backends.names())})"
            )
    _validate_kernels(config)
    for name, method in methods.items():
        _validate_method(f"methods.{name}", method, methods, datasets)
        _validate_stages(name, method, methods, datasets)

    planned = set()
    for i, block in enumerate(config["grid"]):
        where = f"grid[{i}]"
        _check_names("model", block["models"], models, f"{where}.models")
        _check_names("method", block["methods"], methods, f"{where}.methods")
        _check_names("dataset", block["datasets"], datasets, f"{where}.datasets")
        for model_name, method_name in itertools.product(block["models"], block["methods"]):
            backend = backends.get(models[model_name]["backend"])
            backend.validate_method(f"methods.{method_name}", methods[method_name])
            for j, stage in enumerate(stages(methods[method_name])):
                backend.validate_method(
                    f"methods.{method_name}.stages[{j}]",
                    stage_method(methods[method_name], stage),
                )
        for method_name, dataset_name in itertools.product(block["methods"], block["datasets"]):
            want = "preference" if methods[method_name]["kind"] == "dpo" else "chat"
            have = datasets[dataset_name]["format"]
            if want != have:
                raise ConfigError(
                    f"config key {where}: method {method_name!r} ({methods[method_name]['kind']}) "
                    f"needs a {want} dataset, but dataset {dataset_name!r} is {have} "
                    f"(allowed {want} datasets: "
                    + ", ".join(sorted(n for n, d in datasets.items() if d["format"] == want))
                    + ")"
                )
        planned.update(
            itertools.product(block["models"], block["methods"], block["datasets"], block["seeds"])
        )
    for model, method, _dataset, seed in sorted(planned):
        spec = methods[method]
        if spec["kind"] == "dpo":
            parent = (model, spec["parent"]["method"], spec["parent"]["dataset"], seed)
            if parent not in planned:
                raise ConfigError(
                    f"config key methods.{method}.parent: the grid runs {method} for "
                    f"{model} seed {seed}, but not its parent run "
                    f"{model}/{parent[1]}/{parent[2]}/seed{seed} — add it to the grid"
                )
    publish_targets(config)  # each entry a run of the grid, each repo id valid and unique


def _validate_evaluations(config: dict) -> None:
    for name, ev in config.get("evaluations", {}).items():
        where = f"evaluations.{name}"
        if ev["kind"] == "questions":
            for key in ("questions", "judge"):
                if key not in ev:
                    raise ConfigError(f"config key {where}.{key}: required for kind questions")
            judge = ev["judge"]
            if judge["kind"] == "local":
                if judge.get("model") not in config["models"]:
                    raise ConfigError(
                        f"config key {where}.judge.model: a local judge names one of the "
                        f"models (allowed: {', '.join(sorted(config['models']))})"
                    )
            else:
                for key in ("base_url", "model"):
                    if key not in judge:
                        raise ConfigError(
                            f"config key {where}.judge.{key}: required by an api judge"
                        )
        elif not ev.get("tasks"):
            raise ConfigError(f"config key {where}.tasks: an lm_eval evaluation names its tasks")
