"""Every job of the DAG gets its own run's and evaluation's values.

workflow/rules/common.smk gives a rule one constant where every case of its wildcards
gives the same value (Snakemake then evaluates nothing per job: the DAG of a large grid
builds faster), and a function of the job otherwise. Both forms must give each job what
its method, evaluation and model say; these tests read them back from Snakemake's own
jobs, on the default config (constants) and on one where methods, evaluations and models
differ (functions).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from conftest import copy_workflow, load_default_config, write_config
from snakemake.settings.types import ResourceSettings

from ftflow.plan import DagRequest
from ftflow.plan.snakemake_dag import built_dag


def _differing_config() -> dict:
    """The default with methods, evaluations and models that each ask for their own."""
    config = load_default_config()
    config["methods"]["lora"]["resources"] = {
        "cpus_per_task": 2,
        "mem_mb": 3000,
        "runtime": 20,
        "retry_runtime": 45,
    }
    config["models"]["tiny_hybrid"]["dtype"] = "bfloat16"
    strict = copy.deepcopy(config["evaluations"]["em_demo"])
    strict.update(
        questions="data/questions/demo_questions_copy.yaml",
        aligned_below=10,
        coherent_above=60,
        judge={"kind": "local", "model": "tiny_hybrid", "min_number_mass": 0.0},
        resources={"cpus_per_task": 2, "mem_mb": 5000, "runtime": 25},
    )
    config["evaluations"]["em_strict"] = strict
    return config


def _jobs(tmp_path: Path, config: dict) -> dict[str, list]:
    """Snakemake's jobs of the whole default target, by rule."""
    workdir = copy_workflow(tmp_path / "ftflow")
    questions = workdir / "data/questions/demo_questions.yaml"
    (workdir / "data/questions/demo_questions_copy.yaml").write_text(questions.read_text())
    write_config(workdir, config)
    by_rule: dict[str, list] = {}
    # Four cores, so that Snakemake does not cap a job's threads below what it asks.
    cores = ResourceSettings(cores=4, nodes=1)
    with built_dag(DagRequest(workdir=workdir), cores) as (_workflow, _dag, jobs):
        for job in jobs:
            by_rule.setdefault(job.rule.name, []).append(
                {
                    "wildcards": dict(job.wildcards_dict),
                    "input": dict(job.input.items()),
                    "params": dict(job.params.items()),
                    "resources": dict(job.resources.items()),
                    "threads": job.threads,
                    "attempt": job.attempt,
                }
            )
    return by_rule


@pytest.mark.parametrize("case", ["alike", "differing"])
def test_each_job_gets_its_own_methods_evaluations_and_models_values(tmp_path, case):
    config = load_default_config() if case == "alike" else _differing_config()
    jobs = _jobs(tmp_path, config)

    trains = jobs["train"]
    assert {j["wildcards"]["method"] for j in trains} == {"sft", "lora", "dpo"}
    for job in trains:
        res = config["methods"][job["wildcards"]["method"]]["resources"]
        assert job["resources"]["mem_mb"] == res["mem_mb"]
        assert job["resources"]["cpus_per_task"] == res["cpus_per_task"] == job["threads"]
        assert job["resources"]["runtime"] == res["runtime"]  # the first attempt's
        parent = job["input"].get("parent") or []
        if job["wildcards"]["method"] == "dpo":  # trained from its SFT parent's weights
            seed = job["wildcards"]["seed"]
            assert parent == f"results/tiny/sft/secure_code/seed{seed}/final"
        else:
            assert parent == []

    evaluations = config["evaluations"]
    questions = {name for name, ev in evaluations.items() if ev["kind"] == "questions"}
    generated = jobs["generate_answers"]
    assert {j["wildcards"]["evaluation"] for j in generated} == questions
    for job in generated:
        evaluation = evaluations[job["wildcards"]["evaluation"]]
        model = config["models"][job["wildcards"]["model"]]
        assert job["params"]["evaluation"]["questions"] == evaluation["questions"]
        assert job["input"]["questions"] == evaluation["questions"]
        assert job["params"]["model"]["dtype"] == model["dtype"]
        res = evaluation.get("resources") or {}
        if "mem_mb" in res:
            assert job["resources"]["mem_mb"] == res["mem_mb"]

    for job in jobs["judge_answers"]:
        evaluation = evaluations[job["wildcards"]["evaluation"]]
        judge = evaluation["judge"]["model"]
        assert job["params"]["judge"]["model"] == judge
        assert job["input"]["judge_model"] == f"resources/models/{judge}"
        assert job["params"]["judge_model"]["dtype"] == config["models"][judge]["dtype"]
        assert job["input"]["questions"] == evaluation["questions"]

    summaries = jobs["summarize_answers"]
    assert {j["wildcards"]["evaluation"] for j in summaries} == questions
    for job in summaries:
        evaluation = evaluations[job["wildcards"]["evaluation"]]
        assert job["params"]["thresholds"] == {
            "aligned_below": evaluation["aligned_below"],
            "coherent_above": evaluation["coherent_above"],
        }
    lm_eval = {name for name, ev in evaluations.items() if ev["kind"] == "lm_eval"}
    assert {j["wildcards"]["evaluation"] for j in jobs["run_lm_eval"]} == lm_eval
