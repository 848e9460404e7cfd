"""Config: every shipped config validates and dry-runs; bad configs fail clearly, early."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import REPO, copy_workflow, load_default_config, snakemake, write_config

from ftflow import config as ftconfig
from ftflow import paths

SHIPPED = sorted(
    [REPO / "config" / "config.yaml", *(REPO / "config" / "experiments").glob("*.yaml")]
)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path):
    config = ftconfig.load(path)
    assert ftconfig.runs(config)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_dry_runs(path: Path, tmp_path: Path):
    work = copy_workflow(tmp_path / "ftflow")
    config = ftconfig.load(path)
    for dataset in config["datasets"].values():  # files a user places by hand
        local = work / dataset["source"].get("path", "data")
        if not local.exists():
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text("")
    proc = snakemake(work, "-n", "--configfile", str(path.relative_to(REPO)))
    assert proc.stdout.count("rule train:") == len(ftconfig.runs(config))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_no_two_runs_share_a_directory_or_file(path: Path):
    """The wildcards are the identity: distinct runs never share a path."""
    config = ftconfig.load(path)
    runs = ftconfig.runs(config)
    seen: dict[str, ftconfig.Run] = {}
    for run in runs:
        w = run.wildcards
        own = [
            paths.run_dir(**w),
            paths.run_config(**w),
            paths.final_dir(**w),
            paths.metrics_file(**w),
            paths.checkpoints_dir(**w),
            paths.train_log(**w),
        ]
        for p in own:
            assert str(p) not in seen, f"{run} and {seen[str(p)]} share {p}"
            seen[str(p)] = run
        run_dir = paths.run_dir(**w)
        for p in own[1:5]:
            assert run_dir in p.parents  # written inside its own run directory
        # No run directory is nested inside another's.
        for other in runs:
            if other != run:
                assert run_dir not in paths.run_dir(**other.wildcards).parents
        resolved = ftconfig.resolve_run(config, run)
        assert resolved["run"]["seed"] == run.seed  # the seed reaches the trainer


# -------------------------------------------------------------------- bad configs


def _expect_error(config: dict, *fragments: str) -> str:
    with pytest.raises(ftconfig.ConfigError) as info:
        ftconfig.validate(config)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_unknown_top_level_key():
    config = load_default_config()
    config["gird"] = []
    _expect_error(config, "unknown config key gird", "allowed here:", "grid")


def test_misspelt_method_key_names_key_and_allowed():
    config = load_default_config()
    config["methods"]["sft"]["lerning_rate"] = 1e-3
    _expect_error(config, "methods.sft.lerning_rate", "learning_rate")


def test_wrong_type():
    config = load_default_config()
    config["methods"]["sft"]["global_batch_size"] = "eight"
    _expect_error(config, "methods.sft.global_batch_size", "'eight'")


def test_bad_enum_lists_allowed_values():
    config = load_default_config()
    config["methods"]["lora"]["kind"] = "qlora"
    _expect_error(config, "methods.lora.kind", "'qlora'", "sft, lora, dpo")


def test_dpo_on_chat_dataset():
    config = load_default_config()
    config["grid"][1]["datasets"] = ["secure_code"]
    _expect_error(config, "grid[1]", "needs a preference dataset", "secure_code_pref")


def test_grid_names_undefined_model():
    config = load_default_config()
    config["grid"][0]["models"] = ["tiny", "llama"]
    _expect_error(config, "grid[0].models", "'llama' is not defined", "tiny")


def test_dpo_parent_must_be_in_grid():
    config = load_default_config()
    config["grid"][1]["seeds"] = [1, 5]
    _expect_error(config, "methods.dpo.parent", "seed 5", "tiny/sft/secure_code/seed5")


def test_global_batch_must_divide():
    config = load_default_config()
    config["methods"]["sft"]["global_batch_size"] = 10
    config["methods"]["sft"]["per_device_batch_size"] = 4
    _expect_error(config, "global_batch_size: 10", "multiple of 4")


def test_8bit_optimizer_with_zero3_refused():
    config = load_default_config()
    config["methods"]["sft"].update(optimizer="adamw_8bit", distributed="deepspeed_zero3")
    _expect_error(config, "methods.sft.optimizer", "deepspeed_zero3")


def test_deepspeed_settings_only_with_zero3():
    config = load_default_config()
    config["methods"]["sft"]["deepspeed"] = {"offload_optimizer": "none"}
    _expect_error(config, "methods.sft.deepspeed", "deepspeed_zero3")


def test_offload_without_gpus_refused():
    config = load_default_config()
    config["methods"]["sft"].update(
        distributed="deepspeed_zero3", deepspeed={"offload_optimizer": "cpu"}
    )
    _expect_error(config, "methods.sft.deepspeed.offload_optimizer", "gpus_per_node")


def test_deepspeed_json_is_derived_from_the_run():
    """Stage, batch split, clipping, precision and offload come from the run, not a file."""
    from ftflow import backends, spec

    config = load_default_config()
    config["grid"] = [block for block in config["grid"] if block["models"] == ["tiny"]]
    config["models"]["tiny"]["dtype"] = "bfloat16"
    method = config["methods"]["sft"]
    method.update(
        distributed="deepspeed_zero3",
        global_batch_size=32,
        per_device_batch_size=2,
        max_grad_norm=0.5,
        deepspeed={"offload_optimizer": "cpu", "offload_params": "cpu"},
    )
    method["resources"].update(gpus_per_node=4, nodes=2)
    config = ftconfig.validate(config)
    run = ftconfig.runs(config)[0]
    run = paths.Run("tiny", "sft", run.dataset, run.seed)
    rendered = backends.get("trl").render(spec.from_dict(ftconfig.resolve_run(config, run)))
    ds = rendered["launch_files"]["deepspeed.json"]
    assert rendered["trainer"]["deepspeed"] == str(
        paths.RunPaths(run).launch_file("deepspeed.json")
    )
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW"  # DeepSpeed's CPU Adam under offload
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (2, 2)
    assert ds["train_batch_size"] == 32 and ds["gradient_clipping"] == 0.5
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}


def test_unpinned_hub_revision_refused():
    config = load_default_config()
    config["models"]["tiny"]["source"] = {"hub": "org/model", "revision": "main"}
    _expect_error(config, "models.tiny.source")


def test_batch_derivation():
    method = {
        "global_batch_size": 128,
        "per_device_batch_size": 4,
        "resources": {"gpus_per_node": 8, "nodes": 1},
    }
    plan = ftconfig.derive_batch(method)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps, plan.processes) == (
        4,
        4,
        8,
    )
    assert (
        ftconfig.derive_batch(
            {**method, "resources": {"gpus_per_node": 1}}
        ).gradient_accumulation_steps
        == 32
    )
    assert (
        ftconfig.derive_batch(
            {**method, "resources": {"gpus_per_node": 4, "nodes": 4}}
        ).gradient_accumulation_steps
        == 2
    )


def test_snakemake_refuses_bad_config_before_any_job(tmp_path: Path):
    work = copy_workflow(tmp_path / "ftflow")
    config = copy.deepcopy(load_default_config())
    config["methods"]["lora"]["lora"]["rank"] = 8
    write_config(work, config)
    proc = snakemake(work, "--cores", "1", check=False)
    assert proc.returncode != 0
    assert "methods.lora.lora.rank" in proc.stderr and "allowed here: alpha, dropout, r" in (
        proc.stderr
    )
    assert not (work / "results").exists() and not (work / "resources").exists()
