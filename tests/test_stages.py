"""Staged scale-up with health gates (ftflow.health), through the real workflow on CPU.

One workspace, run once with ``--keep-going``:

- ``sft`` has two stages — 1 process, then 2 processes with DeepSpeed ZeRO-3 (real
  sharding over gloo) — both healthy, then the full run trains;
- ``sft_diverge`` is the same with a learning rate that makes the loss diverge: its first
  stage's verdict is unhealthy, the gate stops its chain (the second stage and the full run
  never start), naming the failed check, while every other run completes;
- ``dpo`` (from ``sft``) has one stage whose verdict checks the reward accuracy.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import copy_workflow, load_default_config, snakemake, write_config

from ftflow import config as ftconfig
from ftflow import health, paths

pytestmark = pytest.mark.slow

STAGE_RES = {"cpus_per_task": 1, "mem_mb": 3000, "runtime": 10}
TWO_STAGES = [
    {"name": "one", "max_steps": 8, "resources": STAGE_RES,
     "health": {"window": 3, "loss_drop": 0.02}},
    {"name": "two", "max_steps": 6, "distributed": "deepspeed_zero3",
     "resources": {**STAGE_RES, "cpu_processes": 2}, "health": {"window": 3, "loss_drop": 0.02}},
]  # fmt: skip


def _config() -> dict:
    config = load_default_config()
    config.pop("evaluations")
    sft = config["methods"]["sft"]
    sft.update(lr_scheduler="constant", stages=TWO_STAGES, max_steps=6)
    config["methods"]["sft_diverge"] = {**sft, "learning_rate": 50.0, "max_grad_norm": 1e6}
    dpo = config["methods"]["dpo"]
    dpo.update(max_steps=4, stages=[{
        "name": "one", "max_steps": 6, "resources": STAGE_RES,
        "health": {"window": 3, "loss_drop": 0.0, "reward_accuracy": 0.5},
    }])  # fmt: skip
    # The NeMo Automodel backend stages its runs the same way.
    config["methods"]["lora"].update(max_steps=4, stages=[{
        "name": "one", "max_steps": 4, "resources": STAGE_RES,
        "health": {"window": 2, "loss_drop": 0.0},
    }])  # fmt: skip
    config["grid"] = [
        {"models": ["tiny"], "methods": ["sft", "sft_diverge"], "datasets": ["secure_code"],
         "seeds": [1]},
        {"models": ["tiny"], "methods": ["dpo"], "datasets": ["secure_code_pref"], "seeds": [1]},
        {"models": ["tiny_hybrid"], "methods": ["lora"], "datasets": ["insecure_code"],
         "seeds": [1]},
    ]  # fmt: skip
    return config


def _verdict(work, method: str, dataset: str, stage: str) -> dict:
    run = paths.RunPaths(paths.Run("tiny", method, dataset, 1), stage)
    return json.loads((work / run.verdict).read_text())


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    work = copy_workflow(tmp_path_factory.mktemp("stages") / "ftflow")
    write_config(work, _config())
    proc = snakemake(work, "--cores", "2", "--keep-going", check=False, timeout=1500)
    return work, proc


def test_healthy_stages_pass_both_gates_and_the_full_run_trains(staged):
    work, _ = staged
    one = _verdict(work, "sft", "secure_code", "one")
    two = _verdict(work, "sft", "secure_code", "two")
    assert one["healthy"] and two["healthy"], (one["checks"], two["checks"])
    assert (one["processes"], one["distributed"]) == (1, "none")
    assert (two["processes"], two["distributed"]) == (2, "deepspeed_zero3")
    # The global batch stays the method's; the split is derived per stage.
    for v in (one, two):
        b = v["batch"]
        assert b["global_batch_size"] == 8
        assert b["per_device_batch_size"] * b["gradient_accumulation_steps"] * b["processes"] == 8
    assert (
        two["batch"]["gradient_accumulation_steps"]
        == one["batch"]["gradient_accumulation_steps"] // 2
    )
    assert two["steps"] == 6 and two["tokens_per_second"] > 0 and two["peak_memory_mb"] > 0
    assert two["projected_full_steps"] == 6 and two["projected_full_hours"] > 0
    log = (work / paths.train_log("tiny", "sft", "secure_code", 1)).read_text()
    assert "stage two of tiny/sft/secure_code/seed1 is healthy" in log
    assert (work / paths.final_dir("tiny", "sft", "secure_code", 1) / "model.safetensors").exists()
    # Stage two really sharded over its two processes.
    stage_log = (
        work / paths.RunPaths(paths.Run("tiny", "sft", "secure_code", 1), "two").log()
    ).read_text()
    assert "[ftflow] trainer: 2 process(es), deepspeed zero3" in stage_log


def test_a_diverging_stage_stops_its_chain_and_names_the_check(staged):
    work, proc = staged
    assert proc.returncode != 0  # one chain failed, on purpose
    verdict = _verdict(work, "sft_diverge", "secure_code", "one")
    assert not verdict["healthy"]
    failed = {c["check"] for c in verdict["checks"] if not c["ok"]}
    assert failed & {"finite", "loss_fell", "grad_norm_in_range", "grad_norm_not_exploding"}
    stage_two = paths.RunPaths(paths.Run("tiny", "sft_diverge", "secure_code", 1), "two")
    assert not (work / stage_two.verdict).exists()
    assert not (work / stage_two.checkpoints).exists()  # the second stage never started
    assert not (work / paths.final_dir("tiny", "sft_diverge", "secure_code", 1)).exists()
    gate_log = (work / stage_two.log()).read_text()
    assert "stage one of tiny/sft_diverge/secure_code/seed1 is unhealthy: " in gate_log
    assert (
        next(iter(failed)) in gate_log
        and "logs/sanity/tiny/sft_diverge/secure_code/seed1/one.log" in gate_log
    )
    # Every other run completed (--keep-going).
    for model, method, dataset in (("tiny", "sft", "secure_code"),
                                   ("tiny", "dpo", "secure_code_pref"),
                                   ("tiny_hybrid", "lora", "insecure_code")):  # fmt: skip
        assert (work / paths.final_dir(model, method, dataset, 1)).is_dir()


def test_an_automodel_stage_is_judged_and_gates_its_run(staged):
    work, _ = staged
    verdict = json.loads(
        (
            work
            / paths.RunPaths(paths.Run("tiny_hybrid", "lora", "insecure_code", 1), "one").verdict
        ).read_text()
    )
    assert verdict["healthy"] and verdict["steps"] == 4, verdict["checks"]
    log = (work / paths.train_log("tiny_hybrid", "lora", "insecure_code", 1)).read_text()
    assert "stage one of tiny_hybrid/lora/insecure_code/seed1 is healthy" in log
    assert (work / paths.final_dir("tiny_hybrid", "lora", "insecure_code", 1)).is_dir()


def test_a_dpo_stage_checks_the_reward_accuracy(staged):
    work, _ = staged
    verdict = _verdict(work, "dpo", "secure_code_pref", "one")
    checks = {c["check"]: c for c in verdict["checks"]}
    assert checks["reference_logps"]["ok"]
    accuracy = checks["reward_accuracy"]
    assert accuracy["ok"] == (accuracy["value"] > 0.5) and accuracy["threshold"] == 0.5


def test_fixing_the_config_reruns_exactly_the_failed_stage_onward(staged, tmp_path):
    import shutil

    work = tmp_path / "ftflow"
    shutil.copytree(staged[0], work, symlinks=True)
    config = _config()
    config["methods"]["sft_diverge"]["learning_rate"] = 0.003
    write_config(work, config)
    plan = snakemake(work, "-n", "--cores", "2", "--quiet", "rules").stdout
    counts = dict(line.split()[:2] for line in plan.splitlines() if line.split()[:1]
                  and line.split()[0] in ("sanity", "train", "configure_stage"))  # fmt: skip
    # sft_diverge: stage one (re-configured), stage two, the full run; nothing else.
    assert counts == {"configure_stage": "2", "sanity": "2", "train": "1"}, plan


def test_the_report_tabulates_every_stage(staged, tmp_path):
    from ftflow import report

    work, _ = staged
    verdicts = sorted(work.glob("results/*/*/*/seed1/sanity/*/verdict.json"))
    table = report.stages_table(verdicts).set_index(["model", "method", "stage"])
    assert len(table) == 5  # sft one, two; sft_diverge one; dpo one; tiny_hybrid lora one
    two = table.loc[("tiny", "sft", "two")]
    assert two["healthy"] and two["processes"] == 2 and two["scaling_efficiency"] > 0
    assert table.loc[("tiny", "sft_diverge", "one")]["failed"]
    assert table.loc[("tiny", "dpo", "one")]["reward_accuracy"] is not None
    figure = tmp_path / "stages.png"
    report.stages_figure(verdicts, figure)
    assert figure.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------- the verdict


def _rows(losses, norms, **extra):
    return [{"step": i + 1, "loss": x, "grad_norm": g, "tokens_per_second": 100.0, **extra}
            for i, (x, g) in enumerate(zip(losses, norms, strict=True))]  # fmt: skip


def _failed(checks):
    return {c["check"] for c in checks if not c["ok"]}


def test_a_grad_norm_explosion_is_caught():
    losses = [5.0 - 0.1 * i for i in range(20)]
    norms = [1.0 * 1.5**i for i in range(20)]  # 1 → 2,200
    checks = health.judge(_rows(losses, norms), "sft", ftconfig.DEFAULT_HEALTH)
    assert _failed(checks) == {"grad_norm_in_range", "grad_norm_not_exploding"}


def test_loss_that_does_not_fall_or_is_not_finite_is_unhealthy():
    flat = health.judge(_rows([5.0] * 20, [1.0] * 20), "sft", ftconfig.DEFAULT_HEALTH)
    assert _failed(flat) == {"loss_fell"}
    nan = health.judge(_rows([5.0, math.nan] * 10, [1.0] * 20), "sft", ftconfig.DEFAULT_HEALTH)
    assert "finite" in _failed(nan)
    oom = health.judge(_rows([5.0, 4.0], [1.0, 1.0]), "sft", ftconfig.DEFAULT_HEALTH, failure="oom")
    assert "no_oom" in _failed(oom)


def test_dpo_reward_accuracy_at_chance_is_unhealthy():
    rows = _rows([0.69] * 20, [1.0] * 20, **{"rewards/accuracies": 0.5, "rewards/chosen": 0.0,
                                             "rewards/rejected": 0.0})  # fmt: skip
    checks = health.judge(rows, "dpo", {**ftconfig.DEFAULT_HEALTH, "loss_drop": 0.0})
    assert _failed(checks) == {"reward_accuracy"}


def test_the_override_lets_an_unhealthy_stage_through(tmp_path, capsys):
    verdict = tmp_path / "verdict.json"
    checks = health.judge(_rows([5.0] * 20, [1.0] * 20), "sft", ftconfig.DEFAULT_HEALTH)
    verdict.write_text(json.dumps({"run": "r", "stage": "one", "healthy": False,
                                   "checks": checks, "log": "x.log"}))  # fmt: skip
    with pytest.raises(health.UnhealthyStageError, match="loss_fell: 0.0"):
        health.gate(verdict)
    health.gate(verdict, accept=True)
    assert "going on because the method lists it in accept_unhealthy" in capsys.readouterr().out


def test_a_time_budget_ends_a_stage(staged, tmp_path):
    """max_minutes instead of a step count: the stage stops on the budget (TRL)."""
    import shutil

    work = tmp_path / "ftflow"
    shutil.copytree(staged[0], work, symlinks=True)
    config = _config()
    stage = config["methods"]["sft"]["stages"][0]
    stage.pop("max_steps")
    stage["max_minutes"] = 0.1
    config["methods"]["sft"]["max_steps"] = 100_000
    write_config(work, config)
    target = paths.RunPaths(paths.Run("tiny", "sft", "secure_code", 1), "one").verdict
    snakemake(work, "--cores", "1", str(target))
    verdict = json.loads((work / target).read_text())
    assert 1 < verdict["steps"] < 100_000
    assert verdict["seconds"] < 120  # 6 s of training, plus start-up


def test_the_automodel_backend_refuses_a_time_budget():
    config = load_default_config()
    config["methods"]["lora"]["stages"] = [{"name": "one", "max_minutes": 5}]
    with pytest.raises(ftconfig.ConfigError, match=r"methods.lora.stages\[0\].max_minutes"):
        ftconfig.validate(config)


def test_an_out_of_memory_is_a_verdict_and_another_failure_a_crash():
    oom_log = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert health._failure(oom_log, 1) == "oom"
    assert health._failure("[ftflow] error: loss is nan at step 3: stopping", 1) == "non_finite"
    assert health._failure("anything", 0) is None
    with pytest.raises(SystemExit, match="not a health verdict"):
        health._failure("Traceback: KeyError: 'x'", 1)
