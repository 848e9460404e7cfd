"""The NeMo Automodel backend, for real: NeMo Automodel 0.7.0 training tiny models on CPU.

The backend contract itself (metric keys, checkpoints, final/) is checked for every backend
in tests/test_backend_contract.py; here: what is particular to Automodel — the rendered
YAML, the refusals, the same records as TRL, 2-process DDP and FSDP2, SIGKILL → resume,
and the tiny Nemotron-H of the embedded default evaluated like every other run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import copy_workflow, kill_mid_run, load_default_config, snakemake, write_config
from safetensors.torch import load_file

from ftflow import backends, paths, spec
from ftflow import config as ftconfig
from ftflow.backends.automodel import data as amdata

SEED = 5


def _config(kind: str = "sft", model: str = "tiny", **method) -> dict:
    config = load_default_config()
    config.pop("evaluations")
    config["models"][model]["backend"] = "automodel"
    # Automodel 0.7.0 cannot resume a model whose output head is tied to its embeddings
    # under DDP ("Missing key in checkpoint state_dict: lm_head.weight"; README, Backends)
    config["models"][model]["source"]["tiny"]["tie_word_embeddings"] = False
    config["methods"][kind].update(method)
    config["grid"] = [
        {"models": [model], "methods": [kind], "datasets": ["secure_code"], "seeds": [SEED]}
    ]
    return config


def _resolved(config: dict, kind: str = "sft", model: str = "tiny") -> spec.RunSpec:
    config = ftconfig.validate(copy.deepcopy(config))
    return spec.from_dict(ftconfig.resolve_run(config, paths.Run(model, kind, "secure_code", SEED)))


# ------------------------------------------------------------------ config time (fast)


def test_the_rendered_yaml_is_derived_from_the_run():
    config = _config(
        "lora",
        max_steps=20,
        warmup_ratio=0.25,
        save_steps=5,
        save_total_limit=3,
        lr_scheduler="cosine_with_min_lr",
        min_lr_rate=0.1,
        global_batch_size=8,
        per_device_batch_size=2,
    )
    config["methods"]["lora"]["lora"].update(r=32, alpha=64, target_modules=["q_proj", "v_proj"])
    config["methods"]["lora"]["resources"].update(cpu_processes=2)
    run = _resolved(config, "lora")
    rendered = backends.get("automodel").render(run)["launch_files"]["automodel.yaml"]
    assert rendered["seed"] == SEED
    assert rendered["checkpoint"]["checkpoint_dir"] == str(run.paths.checkpoints)
    # Automodel's own pruning is off: ftflow keeps the newest 3 complete ones after marking
    assert rendered["checkpoint"]["max_recent_checkpoints"] is None
    assert backends.get("automodel").render(run)["retention"] == {"save_total_limit": 3}
    assert rendered["model"]["pretrained_model_name_or_path"] == str(paths.model_dir("tiny"))
    assert rendered["step_scheduler"] == {
        "global_batch_size": 8,
        "local_batch_size": 2,  # × 2 accumulation × 2 processes, as run.yaml's batch says
        "num_epochs": 2,
        "ckpt_every_steps": 5,
        "val_every_steps": None,
        "preemption_signal": ["SIGUSR1", "SIGTERM"],  # ftflow.interrupt
        "max_steps": 20,
    }
    lr = config["methods"]["lora"]["learning_rate"]
    assert rendered["lr_scheduler"] == {
        "lr_decay_style": "cosine",
        "lr_warmup_steps": 5,
        "init_lr": 0.0,
        "max_lr": lr,
        "min_lr": pytest.approx(lr * 0.1),
    }
    assert rendered["peft"]["dim"] == 32 and rendered["peft"]["alpha"] == 64
    assert rendered["peft"]["target_modules"] == ["*.q_proj", "*.v_proj"]
    assert rendered["dataset"]["manifest"] == str(paths.prepared("tiny", "secure_code"))
    # the job's command line carries no override: the launcher line and run.yaml, nothing else
    launch = backends.get("automodel").launch(config["methods"]["lora"], run.run)
    assert launch.command.endswith("-m ftflow.train")
    assert launch.inputs == (str(run.paths.launch_file("automodel.yaml")),)


def test_fsdp_keeps_the_models_precision():
    config = _config(distributed="fsdp", gradient_checkpointing=True)
    config["methods"]["sft"]["resources"].update(cpu_processes=2)
    rendered = backends.get("automodel").render(_resolved(config))["launch_files"]
    distributed = rendered["automodel.yaml"]["distributed"]
    assert distributed["strategy"] == "fsdp2" and distributed["activation_checkpointing"] is True
    assert distributed["mp_policy"]["param_dtype"] == "float32"  # Automodel's default: bf16


@pytest.mark.parametrize(
    "kind,change,key",
    [
        ("dpo", {}, "methods.dpo.kind"),
        ("sft", {"distributed": "deepspeed_zero3"}, "methods.sft.distributed"),
        ("sft", {"optimizer": "adamw_8bit"}, "methods.sft.optimizer"),
        ("sft", {"epochs": 1.5}, "methods.sft.epochs"),
        ("sft", {"warmup_ratio": 0.1}, "methods.sft.warmup_ratio"),
        ("sft", {"gradient_checkpointing": True}, "methods.sft.gradient_checkpointing"),
    ],
)
def test_what_automodel_cannot_honour_is_refused(kind, change, key):
    config = load_default_config()
    config["models"]["tiny"]["backend"] = "automodel"
    config["methods"][kind].update(change)
    with pytest.raises(ftconfig.ConfigError, match=key.replace(".", r"\.")):
        ftconfig.validate(config)


def test_a_tiny_key_the_architecture_does_not_use_is_refused():
    config = load_default_config()
    config["models"]["tiny_hybrid"]["source"]["tiny"]["num_layers"] = 3
    with pytest.raises(ftconfig.ConfigError, match=r"tiny_hybrid\.source\.tiny\.num_layers"):
        ftconfig.validate(config)
    config = load_default_config()
    config["models"]["tiny"]["source"]["tiny"]["pattern"] = "M*"
    with pytest.raises(ftconfig.ConfigError, match=r"models\.tiny\.source\.tiny\.pattern"):
        ftconfig.validate(config)


# ----------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A workdir with the tiny model built and secure_code prepared for it."""
    work = copy_workflow(tmp_path_factory.mktemp("automodel") / "ftflow")
    write_config(work, _config())
    run = paths.RunPaths.of("tiny", "sft", "secure_code", SEED)
    snakemake(work, str(run.run_config), str(paths.prepared("tiny", "secure_code")), "--cores", "2")
    return work


@pytest.mark.slow
def test_both_backends_train_on_the_same_records_tokens_and_labels(prepared: Path, monkeypatch):
    """Automodel's dataset is ftflow's cache: each record's tokens and assistant-only labels
    are what TRL's own collator feeds its model, shifted by one as Automodel's loss expects."""
    from ftflow.backends.trl.trainer import build_trainer

    monkeypatch.chdir(prepared)
    run = spec.load(paths.run_config("tiny", "sft", "secure_code", SEED))
    trl = backends.get("trl")
    trainer = build_trainer(run, trl.render(run), prepared / "metrics.partial.jsonl")
    automodel = amdata.prepared_dataset(
        str(paths.prepared("tiny", "secure_code")), trainer.processing_class
    )
    assert len(automodel) == len(trainer.train_dataset) == 64
    supervised = 0
    for index in range(len(automodel)):
        batch = trainer.data_collator([trainer.train_dataset[index]])
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        item = automodel[index]
        assert item["input_ids"] == ids[:-1]
        assert item["labels"] == labels[1:]
        supervised += sum(label != -100 for label in item["labels"])
    assert 0 < supervised < sum(len(automodel[i]["labels"]) for i in range(len(automodel)))


def _trained(tmp_path: Path, name: str, config: dict, target: Path) -> Path:
    work = copy_workflow(tmp_path / name)
    write_config(work, config)
    snakemake(work, str(target), "--cores", "2", timeout=1200)
    return work


@pytest.mark.slow
def test_two_process_ddp_sigkill_then_resume_matches_uninterrupted(tmp_path: Path):
    config = _config(max_steps=8, save_steps=2, save_total_limit=5, distributed="ddp")
    config["methods"]["sft"].update(per_device_batch_size=1)
    config["methods"]["sft"]["resources"].update(cpu_processes=2)
    run = paths.RunPaths.of("tiny", "sft", "secure_code", SEED)
    straight = _trained(tmp_path, "straight", config, run.final)

    work = copy_workflow(tmp_path / "killed")
    write_config(work, config)
    snakemake(work, str(run.run_config), str(paths.prepared("tiny", "secure_code")), "--cores", "2")
    killed_at = kill_mid_run(work, run.final, after_step=2, cores="2")
    assert killed_at < 8
    snakemake(work, str(run.final), "--cores", "2", "--rerun-incomplete", timeout=1200)
    log = (work / run.log()).read_text()
    assert "rank 1 of 2" in log
    resumed = int(log.split("resuming from epoch_0_step_")[1].split()[0]) + 1
    assert resumed >= killed_at

    def weights(root: Path) -> dict:
        return load_file(next((root / run.final).glob("model*.safetensors")))

    a, b = weights(work), weights(straight)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(x) for x in (work / run.metrics).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))  # every step, despite the kill
    uninterrupted = [json.loads(x) for x in (straight / run.metrics).read_text().splitlines()]
    assert [r["loss"] for r in rows] == [r["loss"] for r in uninterrupted]


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_is_sharded(tmp_path: Path):
    config = _config(max_steps=4, save_steps=2, distributed="fsdp")
    config["methods"]["sft"]["resources"].update(cpu_processes=2)
    run = paths.RunPaths.of("tiny", "sft", "secure_code", SEED)
    work = _trained(tmp_path, "fsdp", config, run.final)
    rendered = yaml.safe_load((work / run.launch_file("automodel.yaml")).read_text())
    assert rendered["distributed"]["strategy"] == "fsdp2"
    checkpoint = backends.get("automodel").checkpoints(work / run.checkpoints)[-1]
    assert len(list((checkpoint.path / "optim").glob("*.distcp"))) == 2  # one shard per rank
    base = load_file(work / paths.model_dir("tiny") / "model.safetensors")
    full = load_file(next((work / run.final).glob("model*.safetensors")))
    assert {k: v.shape for k, v in full.items()} == {k: v.shape for k, v in base.items()}


@pytest.mark.slow
def test_the_default_nemotron_h_runs_are_evaluated_like_the_others(default_run: Path):
    """final/ of Automodel-trained runs (full SFT and LoRA of the tiny Nemotron-H) feeds
    generation, the local judge and lm-eval, as every TRL run's does."""
    for method in ("sft", "lora"):
        run = paths.RunPaths.of("tiny_hybrid", method, "insecure_code", 1)
        assert "backend automodel" in (default_run / run.log()).read_text()
        stamp = json.loads((default_run / run.final / "ftflow.json").read_text())
        assert stamp["backend"] == "automodel"
        judged = (default_run / run.eval_dir("em_demo") / "judged.jsonl").read_text().splitlines()
        assert judged and all(json.loads(row)["answer"] is not None for row in judged)
        lm_eval = json.loads(
            (default_run / run.eval_dir("secure_choice") / "lm_eval.json").read_text()
        )
        assert lm_eval["results"]
    config = yaml.safe_load(
        (default_run / paths.run_config("tiny_hybrid", "sft", "insecure_code", 1)).read_text()
    )
    assert config["model"]["backend"] == "automodel"
