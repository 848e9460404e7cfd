"""The CUDA-only calls NeMo Automodel 0.7.0 makes unconditionally, made safe on a CPU.

Used only where CUDA is absent (tests and laptops); :func:`apply` does nothing on a machine
with a GPU. Exactly these calls are patched, nothing else of Automodel:

- ``torch.cuda.reset_peak_memory_stats()`` (``recipes/llm/train_ft.py`` in ``setup`` and in
  validation) raises without CUDA: a no-op here;
- ``torch.cuda.current_device()`` (``_transformers/auto_model.py``, ``train_ft.py``) raises:
  it answers 0, and the two functions that then receive that device
  (``apply_model_infrastructure``, ``instantiate_infrastructure``, bound by name in
  ``infrastructure.py``, ``auto_model.py`` and ``train_ft.py``) get the CPU instead.
"""

from __future__ import annotations

import functools

#: Where ``apply_model_infrastructure`` / ``instantiate_infrastructure`` are bound by name.
_BOUND_IN = (
    "nemo_automodel._transformers.infrastructure",
    "nemo_automodel._transformers.auto_model",
    "nemo_automodel.recipes.llm.train_ft",
)
_DEVICE_TAKERS = ("apply_model_infrastructure", "instantiate_infrastructure")


def _on_cpu(device):
    import torch

    if isinstance(device, int) or (
        isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda"
    ):
        return torch.device("cpu")
    return device


def _device_to_cpu(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _on_cpu(kwargs["device"])
        return fn(*args, **kwargs)

    wrapper.ftflow_cpu_shim = True
    return wrapper


def apply() -> bool:
    """Patch the calls above when CUDA is absent; return whether anything was patched."""
    import importlib

    import torch

    if torch.cuda.is_available():
        return False
    torch.cuda.reset_peak_memory_stats = lambda *args, **kwargs: None
    torch.cuda.current_device = lambda: 0
    modules = [importlib.import_module(name) for name in _BOUND_IN]
    for name in _DEVICE_TAKERS:
        original = getattr(modules[0], name)
        if getattr(original, "ftflow_cpu_shim", False):
            continue  # applied already
        wrapped = _device_to_cpu(original)
        for module in modules:
            setattr(module, name, wrapped)
    return True
