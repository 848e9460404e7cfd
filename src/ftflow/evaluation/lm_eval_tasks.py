"""lm-eval task handling: a TaskManager that knows the project's tasks, relative data paths
in task YAMLs resolved against the YAML's folder, and prefetching hub task data (login node).

See :mod:`ftflow.evaluation.lm_eval_runner` for why relative paths are rewritten.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _is_relative_local(spec: object) -> bool:
    return (
        isinstance(spec, str)
        and bool(spec)
        and "://" not in spec
        and not os.path.isabs(os.path.expanduser(spec))
    )


def _absolute(spec: Any, base: Path) -> Any:
    """``data_files`` (a str, list of str, or {split: str | list}) with relative paths made
    absolute against ``base``."""
    if isinstance(spec, str):
        return str(base / spec) if _is_relative_local(spec) else spec
    if isinstance(spec, Sequence):
        return [_absolute(item, base) for item in spec]
    if isinstance(spec, Mapping):
        return {key: _absolute(value, base) for key, value in spec.items()}
    return spec


def resolve_data_paths(config: dict, base_dir: Path) -> dict:
    """A copy of the task ``config`` whose relative ``dataset_kwargs.data_files`` and
    ``dataset_kwargs.data_dir`` are absolute paths against ``base_dir`` (the YAML's folder)."""
    kwargs = config.get("dataset_kwargs")
    if not isinstance(kwargs, Mapping):
        return config
    base = Path(os.path.abspath(base_dir))
    new = dict(kwargs)
    if "data_files" in new:
        new["data_files"] = _absolute(new["data_files"], base)
    if _is_relative_local(new.get("data_dir")):
        new["data_dir"] = str(base / new["data_dir"])
    return {**config, "dataset_kwargs": new}


def _install_path_resolution(manager) -> None:
    """Make ``manager`` resolve each task YAML's relative data paths against the YAML's folder.

    lm-eval 0.4.13 builds every task (also inside groups and tags) from
    ``TaskFactory._load_full_config(entry, overrides)``; its result is wrapped here.
    """
    factory = getattr(manager, "_factory", None)
    load = getattr(factory, "_load_full_config", None)
    if load is None:
        logger.warning(
            "this lm-eval version has no TaskFactory._load_full_config: relative data_files "
            "in task YAMLs resolve against the working directory"
        )
        return

    def load_resolved(entry, overrides=None):
        config = load(entry, overrides)
        yaml_path = getattr(entry, "yaml_path", None)
        if yaml_path:
            config = resolve_data_paths(config, Path(yaml_path).parent)
        return config

    factory._load_full_config = load_resolved


def _task_manager(tasks: Sequence[str], include_path: Path | None):
    """A TaskManager that knows ``tasks``: the local tasks alone when they suffice (indexing
    lm-eval's ~15,000 built-in tasks takes seconds), else local + built-in."""
    from lm_eval.tasks import TaskManager

    manager = None
    if include_path is not None:
        include = str(Path(os.path.abspath(include_path)))
        local = TaskManager(include_path=include, include_defaults=False)
        if all(task in local.all_tasks for task in tasks):
            manager = local
    if manager is None:
        manager = TaskManager(
            include_path=None if include_path is None else str(os.path.abspath(include_path))
        )
    _install_path_resolution(manager)
    return manager


def prefetch_tasks(tasks: Sequence[str], include_path: Path | None = None) -> list[str]:
    """On the login node (online, with :func:`ftflow.offline.offline_env`'s ``HF_HOME`` /
    ``HF_DATASETS_CACHE``): load ``tasks`` once, so their hub datasets land in the datasets
    cache that offline jobs read. Returns the names of the leaf tasks loaded."""
    manager = _task_manager(list(tasks), include_path)
    loaded = manager.load(list(tasks))
    return sorted(loaded["tasks"])
