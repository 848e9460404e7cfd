"""The disk a training run takes — its kept checkpoints and its ``final/`` — estimated.

Per run (a ``train`` job; a ``sanity`` stage keeps checkpoints but exports nothing)::

    disk       = kept × checkpoint + final
    kept       = save_total_limit, or ⌈max_steps / save_steps⌉ when that is fewer (a run
                 without max_steps is taken to save at least save_total_limit times)
    checkpoint = weights + optimizer state + model files + TRAINER_FILES
    final      = weights + model files + FINAL_FILES    (Automodel full SFT: + weights, below)

    weights    full SFT, DPO: P × bytes(dtype)           LoRA: A × bytes(adapter dtype)
    optimizer  per trainable parameter (P, or A for LoRA):
                 AdamW (adamw_torch, adamw_torch_fused)  2 moments in the parameter's dtype
                 8-bit AdamW (adamw_8bit, paged_…)       2 one-byte moments (block scales ignored)
                 SGD                                     nothing (no momentum)
                 DeepSpeed ZeRO-3                        12 bytes: fp32 master copy + 2 fp32 moments
                 FSDP2 under bfloat16/float16            trainable parameters are held in float32
                                                         (accelerate upcasts them): 4 + 8 bytes

- ``P``: the model's parameters, a tied embedding counted once, counted by building the model
  on PyTorch's meta device (no memory, no download) from its config: the ``config.json`` in
  ``resources/models/<model>/`` once it is prefetched or built (a local ``path:`` source's own
  before that), a ``tiny:`` model's settings before it is built (``vocab_size`` as set: an upper
  bound), and for a hub model not prefetched yet: unknown — the plan never goes online.
- ``A``: the LoRA adapter, ``r × (in + out)`` for each linear layer it targets
  (``target_modules`` by name, or ``all-linear``: every linear layer but the output head, and
  under Automodel not a Mamba ``out_proj`` either). An adapter is float32 (PEFT upcasts the
  adapter of a bfloat16/float16 model), but in the model's dtype under DeepSpeed ZeRO-3 (TRL
  keeps it there).
- Model files: the tokenizer, chat template and configs that every checkpoint and ``final/``
  copy — their size in the model folder once it exists, else 0.
- Automodel: its optimizer state (torch.distributed.checkpoint) carries ~9 KiB per tensor,
  3 tensors per trainable parameter tensor (:data:`DCP_TENSOR_FILES`), and a full SFT's last
  checkpoint also holds a consolidated copy of the weights.

The estimate counts tensor bytes; what it leaves out — serialisation headers, the RNG,
scheduler and trainer state, the training arguments — is covered by :data:`TRAINER_FILES`
and :data:`FINAL_FILES`, measured on the tiny default's runs (TRL, full SFT within 1 %, LoRA
within 10 %: tests/test_plan.py). Beside real weights they are nothing. While a new checkpoint
is written and before the oldest is removed, a running job holds one checkpoint more.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftflow import paths

GB = 10**9  # quotas are sold in decimal gigabytes
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: The Trainer's own files in each checkpoint (RNG, scheduler and trainer state, arguments)
#: and serialisation headers: 48 KiB, measured on the tiny default.
TRAINER_FILES = 48 * 1024
#: The same for ``final/`` (training arguments, ftflow.json, an adapter's README).
FINAL_FILES = 16 * 1024
#: torch.distributed.checkpoint (Automodel's optimizer state) writes each tensor — a
#: parameter's step and two moments — with about 9 KiB of headers and metadata: measured.
DCP_TENSOR_FILES = 9 * 1024
#: Files of a model folder that are weights (the rest is copied into checkpoints and final/).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
#: What ``all-linear`` leaves out besides the output head, per backend.
ALL_LINEAR_EXCEPT = {"automodel": ("out_proj",)}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know of a model."""

    params: int
    tensors: int  # parameter tensors
    linears: tuple[tuple[str, int, int], ...]  # (module name, in features, out features)
    output_head: str  # the module name of the output head ("" when there is none)
    model_files: int  # bytes of the folder's non-weight files (0: not there yet)
    source: str  # where the sizes came from


@dataclass(frozen=True)
class DiskEstimate:
    """One job's disk, in bytes; ``None`` with ``unknown`` saying why."""

    checkpoint: int | None = None
    kept: int = 0
    final: int | None = None
    unknown: str = ""

    @property
    def total(self) -> int | None:
        if self.checkpoint is None or self.final is None:
            return None
        return self.kept * self.checkpoint + self.final


def _meta_model(config):
    """The model of a transformers config, with no memory behind its parameters."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(
            config, trust_remote_code=getattr(config, "auto_map", None) is not None
        )


def shape_of(config, model_files: int, source: str) -> ModelShape:
    import torch

    model = _meta_model(config)
    head = model.get_output_embeddings()
    head_name = next((n for n, m in model.named_modules() if m is head), "") if head else ""
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        tensors=sum(1 for _ in model.parameters()),
        linears=tuple(
            (name, m.in_features, m.out_features)
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear)
        ),
        output_head=head_name,
        model_files=model_files,
        source=source,
    )


def _model_files(folder: Path) -> int:
    return sum(
        f.stat().st_size
        for f in folder.iterdir()
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and not f.name.startswith(".")
    )


def model_shape(name: str, model: Mapping[str, Any], root: Path) -> ModelShape | str:
    """The shape of config model ``name``, or why it is unknown (a sentence)."""
    from transformers import AutoConfig

    folder = Path(root) / paths.model_dir(name)
    source = model.get("source") or {}
    local = Path(root) / source["path"] if "path" in source else None
    trust = bool(model.get("trust_remote_code"))
    for candidate in (folder, local):
        if candidate is not None and (candidate / "config.json").is_file():
            config = AutoConfig.from_pretrained(candidate, trust_remote_code=trust)
            return shape_of(config, _model_files(candidate), str(candidate / "config.json"))
    if "tiny" in source:
        from ftflow import tiny

        settings = {k: v for k, v in source["tiny"].items() if k not in ("corpus", "seed")}
        config, _ = tiny.model_config(**settings)
        return shape_of(config, 0, f"models.{name}.source.tiny")
    return (
        f"model {name} is not prefetched yet ({folder / 'config.json'} is missing; "
        f"`snakemake --cores 1 {folder}` fetches it)"
    )


def _targets(method: Mapping[str, Any], shape: ModelShape, backend: str) -> list[tuple]:
    wanted = (method.get("lora") or {}).get("target_modules", "all-linear")
    if wanted == "all-linear":
        skip = ALL_LINEAR_EXCEPT.get(backend, ())
        return [
            lin
            for lin in shape.linears
            if lin[0] != shape.output_head and lin[0].rsplit(".", 1)[-1] not in skip
        ]
    names = {wanted} if isinstance(wanted, str) else set(wanted)
    return [lin for lin in shape.linears if lin[0].rsplit(".", 1)[-1] in names]


def adapter_params(method: Mapping[str, Any], shape: ModelShape, backend: str = "trl") -> int:
    """Parameters of the method's LoRA adapter on ``shape``: r × (in + out) per target."""
    r = (method.get("lora") or {}).get("r", 8)
    return sum(r * (fan_in + fan_out) for _, fan_in, fan_out in _targets(method, shape, backend))


def kept_checkpoints(method: Mapping[str, Any]) -> int:
    """How many checkpoints stay: save_total_limit, or every save when max_steps has fewer."""
    kept = int(method.get("save_total_limit", 2))
    if method.get("max_steps"):
        kept = min(kept, math.ceil(method["max_steps"] / method.get("save_steps", 100)))
    return kept


def estimate(
    method: Mapping[str, Any], model: Mapping[str, Any], shape: ModelShape, *, exports: bool = True
) -> DiskEstimate:
    """The disk of one run of ``method`` on ``model`` (``exports``: it writes ``final/``)."""
    dtype = model.get("dtype", "float32")
    backend = model.get("backend", "trl")
    distributed = method.get("distributed", "none")
    optimizer = method.get("optimizer", "adamw_torch")
    mixed = dtype != "float32"
    if method.get("kind") == "lora":
        trainable = adapter_params(method, shape, backend)
        tensors = 2 * len(_targets(method, shape, backend))  # lora_A, lora_B
        held = BYTES[dtype] if distributed == "deepspeed_zero3" else 4
        weights = trainable * held
    else:
        trainable, tensors = shape.params, shape.tensors
        held = 4 if distributed == "fsdp" and mixed else BYTES[dtype]
        weights = shape.params * held
    if distributed == "deepspeed_zero3":
        state = 12
    elif optimizer == "sgd":
        state = 0
    elif "8bit" in optimizer:
        state = 2
    else:
        state = 2 * held
    checkpoint = weights + trainable * state + shape.model_files + TRAINER_FILES
    if backend == "automodel":
        checkpoint += 3 * tensors * DCP_TENSOR_FILES
    final = weights + shape.model_files + FINAL_FILES if exports else 0
    if exports and backend == "automodel" and method.get("kind") != "lora":
        final += weights  # the last checkpoint's consolidated copy, besides final/
    return DiskEstimate(checkpoint, kept_checkpoints(method), final)


def human(n_bytes: int | None) -> str:
    """``1.2 GB``, ``340.5 MB``, ``48.0 kB`` (decimal units, as quotas); ``?`` when unknown."""
    if n_bytes is None:
        return "?"
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n_bytes >= size:
            return f"{n_bytes / size:,.1f} {unit}"
    return f"{n_bytes} B"
