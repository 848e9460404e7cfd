"""The backend contract, written once and run for every backend.

What is expected comes from the contract (``ftflow.backends``: metric keys, the complete
marker, final/ as ``ftflow.final`` reads it), never from the backend under test. Each
backend trains the tiny default model for real: full SFT and LoRA, checkpointing on the way.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO, copy_workflow, load_default_config, snakemake, write_config

from ftflow import backends, final, lifecycle, paths, spec
from ftflow import config as ftconfig

BACKENDS = backends.names()


def _config(backend: str, kind: str) -> dict:
    config = load_default_config()
    config["models"]["tiny"]["backend"] = backend
    config.pop("evaluations")
    method = config["methods"][kind]
    method.update(max_steps=6, save_steps=2, save_total_limit=2)
    config["grid"] = [
        {"models": ["tiny"], "methods": [kind], "datasets": ["secure_code"], "seeds": [3]}
    ]
    return config


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.mark.parametrize("name", BACKENDS)
def test_launch_names_its_module_environment_and_files(name: str):
    b = backends.get(name)
    run = paths.Run("tiny", "sft", "secure_code", 3)
    config = load_default_config()
    config["models"]["tiny"]["backend"] = name
    for distributed in ("none", "ddp", "deepspeed_zero3"):
        method = config["methods"]["sft"]
        method.update(distributed=distributed)
        method["resources"].update(nodes=1, gpus_per_node=2, cpus_per_task=1)
        try:
            ftconfig.validate(config)
        except ftconfig.ConfigError:
            continue  # a mode this backend refuses
        launch = b.launch(method, run)
        # every backend's processes enter through the neutral lifecycle
        assert launch.command.endswith("-m ftflow.train"), launch.command
        assert (REPO / launch.conda_env).is_file(), launch.conda_env
        # every file the job reads is the run's own, rendered by the backend from run.yaml
        rendered = b.render(spec.from_dict(ftconfig.resolve_run(config, run)))
        for needed in launch.inputs:
            assert Path(needed).parent == paths.RunPaths(run).launch_file("x").parent, needed
            assert Path(needed).name in rendered["launch_files"], needed


def test_unknown_backend_is_refused_naming_the_allowed_ones():
    config = load_default_config()
    config["models"]["tiny"]["backend"] = "nemo-automodel"
    with pytest.raises(ftconfig.ConfigError, match=r"models\.tiny\.backend.*automodel.*trl"):
        ftconfig.validate(config)


def test_metrics_missing_a_contract_key_are_refused():
    rows = [{"step": 1, "loss": 1.0}]
    with pytest.raises(lifecycle.MetricsContractError, match="lacks epoch"):
        lifecycle.check_metrics(rows, "sft", "here")
    with pytest.raises(lifecycle.MetricsContractError, match="no metric rows"):
        lifecycle.check_metrics([], "sft", "here")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sft", "lora"])
def test_backend_honours_the_contract(backend: str, kind: str, tmp_path: Path):
    work = copy_workflow(tmp_path / "ftflow")
    write_config(work, _config(backend, kind))
    run = paths.RunPaths.of("tiny", kind, "secure_code", 3)
    snakemake(work, str(run.final), "--cores", "2")

    # metrics.jsonl: every row has the contract's keys, one row per step
    rows = [json.loads(x) for x in (work / run.metrics).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    for row in rows:
        assert set(backends.metric_keys(kind)) <= set(row)
        assert all(row[k] is not None for k in backends.metric_keys(kind))

    # checkpoints: listed oldest first, every one complete, the newest at the last save;
    # of the saves at steps 2, 4 and 6, the newest save_total_limit (2) are kept
    b = backends.get(backend)
    listed = b.checkpoints(work / run.checkpoints)
    assert [c.step for c in listed] == [4, 6]
    assert all(c.complete for c in listed)

    # final/: what the one reader finds — an adapter over the base for LoRA, else weights
    found = final.read(work / paths.model_dir("tiny"), work / run.final)
    assert found.is_adapter == (kind == "lora")
    if found.is_adapter:
        assert found.base_name == "tiny"  # a config name, no machine path
    assert found.tokenizer == work / run.final
    assert str(work) not in "".join(
        p.read_text(errors="ignore") for p in (work / run.final).glob("*.json")
    )
    stamp = json.loads((work / run.final / "ftflow.json").read_text())
    assert stamp["backend"] == backend and stamp["kind"] == kind

    # render: what the backend hands its library is plain data, derived from run.yaml
    rendered = b.render(spec.load(work / run.run_config))
    json.dumps(rendered)
    log = (work / run.log("train")).read_text()
    assert f"backend {backend}" in log
