"""Every config key has an effect, or it is refused.

Walks every leaf key of the schema. For each, a shipped config is changed at that key and
the workflow's DAG is built (in-process, as ``snakemake -n`` builds it, every job forced):
the key has an effect when some job does something else — its params, its resources, its
input files, its shell command, or, for a training job, the settings its backend hands to
the library (``backend.render``: stronger than ``run.yaml``, which holds every method key
whether the trainer reads it or not). A key may instead be refused with a
:class:`ConfigError` that names it. A handful of keys act where a DAG cannot show it; each
is listed in :data:`ELSEWHERE` with the test that shows its effect.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, copy_workflow

from ftflow import backends, spec
from ftflow import config as ftconfig

SHIPPED = [
    "config/config.yaml",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "config" / "experiments").glob("*.yaml")),
]

# Keys whose effect no DAG shows, and the test that shows it.
ELSEWHERE = {
    "methods.*.resources.retry_runtime": "the retried job's time limit: tests/"
    "test_slurm_resume.py::test_time_limit_signal_checkpoint_retry_resume (sacct reads it back)",
    "evaluations.*.resources.retry_runtime": "evaluation jobs share the resources block; "
    "their retries use it as training's do",
    "methods.*.stages.[].resources.retry_runtime": "a sanity job's retry time limit "
    "(get_stage_runtime, as get_train_runtime for training)",
    "plan_cost_per_gpu_hour": "the plan's cost column: tests/test_plan.py",
    "plan_disk_quota_gb": "the plan's disk warning: tests/test_plan.py::"
    "test_the_disk_quota_warns_only_when_the_estimate_exceeds_it",
    # Tracking acts inside the training job (exported by the Snakefile) and in the login
    # node's sync_tracking, asked for by name: tests/test_tracking.py shows each.
    "tracking.tensorboard": "test_tensorboard_events_hold_the_metrics_rows",
    **dict.fromkeys(
        [f"tracking.wandb.{k}" for k in ("project", "entity", "mode")],
        "test_wandb_offline_runs_carry_identity_and_metrics, test_sync_refuses_…",
    ),
    **dict.fromkeys(
        [f"tracking.wandb.{k}" for k in ("sync_retries", "sync_retry_delay", "sync_timeout")],
        "test_sync_to_an_unreachable_endpoint_fails_clearly_and_keeps_everything",
    ),
    # A kernel package of the user's: no shipped config needs one (the built-in
    # causal_conv1d and mamba_ssm are pinned in ftflow.kernels); tests/test_kernels.py:
    **dict.fromkeys(
        [f"kernels.packages.*.source.{k}" for k in ("pypi", "version", "sha256", "url")],
        "test_pypi_and_url_sources_are_fetched_and_checked",
    ),
    "kernels.packages.*.source.path": "test_an_edited_kernel_source_is_a_new_key_that_retrains",
    "kernels.packages.*.env_prefix": "test_the_build_is_keyed_by_toolchain_… (the wheel's "
    "version carries <env_prefix>_LOCAL_VERSION)",
    "kernels.packages.*.imports": "test_a_kernel_that_does_not_import_is_an_error_naming_…",
    "kernels.packages.*.cuda": "test_kernel_config_errors_name_the_key",
    "kernels.packages.*.patch": "test_a_patch_is_applied_and_is_part_of_the_key",
    # Publishing runs only when asked for by name (`snakemake publish`, not the default
    # target): tests/test_publish.py pushes to a fake Hub and reads each key back.
    **dict.fromkeys(
        [
            "publish.organisation",
            *(f"publish.runs.[].{k}" for k in ("model", "method", "dataset", "seed")),
            *(f"publish.runs.[].{k}" for k in ("name", "private")),
        ],
        "test_publish_pushes_each_final_with_its_card (repo ids, files, visibility), "
        "test_publish_config_errors_name_the_key",
    ),
}


# Keys whose change needs a matching change elsewhere to stay valid: the whole edit.
def _judge_api(config):
    judge = config["evaluations"]["em_demo"]["judge"]
    judge.update(kind="api", base_url="http://127.0.0.1:9/v1")


def _chat_format(config):
    config["datasets"]["secure_code_pref"]["format"] = "chat"
    config["grid"][1]["methods"] = ["sft"]


def _lora_to_sft(config):
    config["methods"]["lora"]["kind"] = "sft"
    del config["methods"]["lora"]["lora"]


COMBINED = {
    "evaluations.*.judge.kind": _judge_api,
    "datasets.*.format": _chat_format,
    "methods.*.kind": _lora_to_sft,
}

# Values to try where "another value of the same type" is not enough.
OTHER_FILES = {
    "path": ["data/chat/secure_code.jsonl", "data/chat/insecure_code.jsonl"],
    "questions": ["data/chat/secure_code.jsonl"],
    "chat_template": ["config/config.yaml"],
    "include_path": ["data"],
}


# -------------------------------------------------------------------------- schema walk


def _resolve(node: dict, schema: dict) -> dict:
    while "$ref" in node:
        target: Any = schema
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def leaf_keys(node: dict, schema: dict, prefix: tuple = ()) -> list[tuple[str, ...]]:
    node = _resolve(node, schema)
    if "oneOf" in node and all("properties" in _resolve(o, schema) for o in node["oneOf"]):
        found: list[tuple[str, ...]] = []
        for option in node["oneOf"]:
            found += [k for k in leaf_keys(option, schema, prefix) if k not in found]
        return found
    if "properties" in node:
        out = []
        for name, sub in node["properties"].items():
            out += leaf_keys(sub, schema, (*prefix, name))
        return out
    if isinstance(node.get("additionalProperties"), dict):
        return leaf_keys(node["additionalProperties"], schema, (*prefix, "*"))
    if node.get("type") == "array" and isinstance(node.get("items"), dict):
        items = _resolve(node["items"], schema)
        if "properties" in items:
            return leaf_keys(items, schema, (*prefix, "[]"))
    return [prefix]


def _schema_of(key: tuple[str, ...], schema: dict) -> dict:
    node = schema
    for part in key:
        node = _resolve(node, schema)
        if part == "*":
            node = node["additionalProperties"]
        elif part == "[]":
            node = node["items"]
        elif "properties" in node:
            node = node["properties"][part]
        else:  # a oneOf of objects
            node = next(
                _resolve(o, schema)["properties"][part]
                for o in node["oneOf"]
                if part in _resolve(o, schema).get("properties", {})
            )
    return _resolve(node, schema)


def _places(config: Any, key: tuple[str, ...], where: tuple = ()):
    """Concrete (parent object, name, dotted path) for ``key`` in ``config``."""
    if len(key) == 1:
        if isinstance(config, dict):
            yield config, key[0], ".".join(map(str, (*where, key[0])))
        return
    head, rest = key[0], key[1:]
    if head == "*" and isinstance(config, dict):
        for name, value in config.items():
            yield from _places(value, rest, (*where, name))
    elif head == "[]" and isinstance(config, list):
        for i, value in enumerate(config):
            yield from _places(value, rest, (*where, f"[{i}]"))
    elif isinstance(config, dict) and head in config:
        yield from _places(config[head], rest, (*where, head))
    elif isinstance(config, dict) and len(rest) == 1 and where:
        config[head] = {}  # an optional block (e.g. resources) the config leaves out
        yield from _places(config[head], rest, (*where, head))


def _set(config: dict, dotted: str, value: Any) -> None:
    """Set the key at ``dotted`` (``a.b[0].c``), creating a missing last block."""
    *parents, leaf = [p for p in dotted.replace("[", ".[").split(".") if p]
    node: Any = config
    for part in parents:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    node[leaf] = value


def _candidates(current: Any, node: dict, name: str) -> list[Any]:
    if "enum" in node:
        return [v for v in node["enum"] if v != current]
    if name in OTHER_FILES:
        return [v for v in OTHER_FILES[name] if v != current]
    kind = node.get("type")
    if kind == "boolean" or isinstance(current, bool):
        return [not current]
    if kind == "integer":
        base = current if isinstance(current, int) else node.get("minimum", 1)
        return [base + 1, base * 2, base + 2, max(base - 1, node.get("minimum", 0))]
    if kind == "number":
        base = current if isinstance(current, (int, float)) else 0.5
        return [base * 2 or 0.5, base / 2, 0.5, 0.25]
    if kind == "array" or isinstance(current, list):
        if current and all(isinstance(v, int) for v in current):
            return [[*current, max(current) + 1]]
        if current and len(current) > 1:
            return [current[:-1]]
        if node.get("items", {}).get("enum"):
            return [[node["items"]["enum"][0]]]
        return [[*(current or []), "other"]]
    if isinstance(current, str) or kind == "string" or "oneOf" in node:
        return [f"{current}-x" if current else "x", "all-linear-x"]
    return [current]


# ------------------------------------------------------------------------ signature


def _signature(config: dict, workdir: Path) -> dict:
    """What every job of the DAG does: params, resources, inputs, command, backend settings."""
    saved = dict(os.environ)  # the Snakefile exports the job environment (ftflow.checkout)
    try:
        return _build_signature(config, workdir)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _build_signature(config: dict, workdir: Path) -> dict:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
    )

    configfile = workdir / "config" / "mutated.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    output = OutputSettings(quiet={Quietness.ALL}, enable_file_logging=False)
    with SnakemakeApi(output) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(cores=1, nodes=1),
            config_settings=ConfigSettings(configfiles=[configfile]),
            snakefile=(workdir / "Snakefile").absolute(),
            workdir=workdir,
        )
        workflow_api.dag(DAGSettings(targets=frozenset(), force_incomplete=True))
        workflow = workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=False, lock_warn_only=True)
        workflow._build_dag()
        out = {}
        for job in workflow.dag.jobs:
            params = {k: v for k, v in job.params.items()}
            if job.rule.name == "configure_run":
                resolved = params.pop("resolved")
                run = spec.from_dict(copy.deepcopy(dict(resolved)))
                params["backend"] = backends.get(run.model.backend).render(run)
            out[(job.rule.name, tuple(sorted(job.wildcards_dict.items())))] = repr(
                (
                    params,
                    sorted((k, v) for k, v in job.resources.items() if not k.startswith("_")),
                    sorted(map(str, job.input)),
                    job.shellcmd if job.is_shell else None,
                )
            )
        return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("keys") / "ftflow")


@pytest.fixture(scope="module")
def shipped(workdir) -> dict[str, tuple[dict, dict]]:
    """Each shipped config, raw, and the signature of its DAG."""
    out = {}
    for name in SHIPPED:
        raw = yaml.safe_load((REPO / name).read_text())
        out[name] = (raw, _signature(copy.deepcopy(raw), workdir))
    return out


def _effect(key: tuple[str, ...], schema: dict, shipped: dict, workdir: Path) -> str | None:
    """How changing ``key`` shows; None when no change of it does anything."""
    node = _schema_of(key, schema)
    dotted_key = ".".join(key)
    if dotted_key in COMBINED:
        raw, base = shipped["config/config.yaml"]
        mutated = copy.deepcopy(raw)
        COMBINED[dotted_key](mutated)
        ftconfig.validate(copy.deepcopy(mutated))
        return "combined edit changes a job" if _signature(mutated, workdir) != base else None
    tried = []
    for name, (raw, base) in shipped.items():
        for parent_path in list(_places(copy.deepcopy(raw), key)):
            _obj, leaf, dotted = parent_path
            current = _obj.get(leaf, node.get("default"))
            for value in _candidates(current, node, leaf):
                mutated = copy.deepcopy(raw)
                _set(mutated, dotted, value)
                try:
                    ftconfig.validate(copy.deepcopy(mutated))
                except ftconfig.ConfigError as error:
                    if dotted.split(".")[-1] in str(error) and f"{leaf}" in str(error):
                        if value != current and "refused" not in tried:
                            tried.append(f"{dotted}={value!r} refused: {error}")
                    continue
                changed = _signature(mutated, workdir)
                if changed != base:
                    return f"{name}: {dotted}={value!r} changes a job"
                tried.append(f"{name}: {dotted}={value!r} changes nothing")
    refused = [t for t in tried if " refused: " in t]
    if refused and not any("changes nothing" in t for t in tried):
        return refused[0]
    return None if tried else "not present in any shipped config"


def test_every_leaf_key_has_an_effect_or_is_refused(workdir, shipped):
    schema = ftconfig.load_schema()
    keys = leaf_keys(schema, schema)
    assert len(keys) > 60, keys  # the walk really reaches the leaves
    without_effect, not_covered = [], []
    for key in keys:
        dotted = ".".join(key)
        if dotted in ELSEWHERE:
            continue
        how = _effect(key, schema, shipped, workdir)
        if how is None:
            without_effect.append(dotted)
        elif how == "not present in any shipped config":
            not_covered.append(dotted)
    assert not without_effect, f"keys accepted and ignored: {without_effect}"
    assert not not_covered, f"keys no shipped config exercises: {not_covered}"
