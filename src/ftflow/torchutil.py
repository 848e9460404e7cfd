"""The few torch helpers every module shares: dtype names, devices.

A config names a dtype as a string (``float32``, ``bfloat16``, ``float16``); this is the
one map from those names to torch.
"""

from __future__ import annotations

DTYPE_NAMES = ("float32", "bfloat16", "float16")


def torch_dtype(name):
    """``torch.dtype`` for a config name (a ``torch.dtype`` passes through)."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            name
        ]
    except KeyError:
        raise ValueError(
            f"dtype {name!r} is not supported (allowed: {', '.join(DTYPE_NAMES)})"
        ) from None


def best_device():
    """The job's accelerator when it has one (SLURM sets CUDA_VISIBLE_DEVICES), else CPU."""
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def model_device(model):
    """Where a model's parameters live (its first parameter's device)."""
    import torch

    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def peak_memory_mb() -> float:
    """This process's peak memory: the accelerator's allocations on a GPU, else the
    process's largest resident set (MB)."""
    import resource

    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
