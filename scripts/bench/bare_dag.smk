# The bare baseline of bench_dag.py: the same DAG shape as ftflow's (same rules, same
# path patterns, same number of jobs per rule) with no ftflow logic — no config
# validation, no resolved-run params, one input function (a base row has no trained
# model to evaluate). bench_dag.py writes grid.yaml next to it.

import yaml

with open("grid.yaml") as handle:
    GRID = yaml.safe_load(handle)

MODELS, METHODS = GRID["models"], GRID["methods"]
DATASETS, SEEDS = GRID["datasets"], GRID["seeds"]
QUESTIONS, JUDGE = GRID["questions"], GRID["judge"]
EV_QUESTIONS = GRID["evaluations"]["questions"]
EV_LM_EVAL = GRID["evaluations"]["lm_eval"]

RUN = "{model}/{method}/{dataset}/seed{seed}"
# Every run of the grid, and each model's untrained base row for each seed.
EVAL_ROWS = expand(
    RUN, model=MODELS, method=METHODS, dataset=DATASETS, seed=SEEDS
) + expand(RUN, model=MODELS, method="base", dataset="none", seed=SEEDS)


def trained_final(wildcards):
    if wildcards.method == "base":
        return []
    w = wildcards
    return f"results/{w.model}/{w.method}/{w.dataset}/seed{w.seed}/final"


wildcard_constraints:
    seed=r"\d+",


rule all:
    input:
        "results/report/runs.csv",
        f"results/report/eval/{EV_QUESTIONS}/comparison.csv",
        f"results/report/eval/{EV_QUESTIONS}/misaligned_by_question.png",
        f"results/report/eval/{EV_LM_EVAL}/lm_eval.csv",


rule prefetch_model:
    output:
        directory("resources/models/{model}"),
    localrule: True
    shell:
        "mkdir -p {output}"


rule prefetch_dataset:
    input:
        "data/bench/{dataset}.jsonl",
    output:
        "resources/datasets/{dataset}/data.jsonl",
    localrule: True
    shell:
        "cp {input} {output}"


rule prepare_dataset:
    input:
        raw="resources/datasets/{dataset}/data.jsonl",
        model="resources/models/{model}",
    output:
        "resources/prepared/{model}/{dataset}.json",
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "touch {output}"


rule configure_run:
    output:
        "results/{model}/{method}/{dataset}/seed{seed}/run.yaml",
    localrule: True
    shell:
        "touch {output}"


rule train:
    input:
        run_config="results/{model}/{method}/{dataset}/seed{seed}/run.yaml",
        model="resources/models/{model}",
        dataset="resources/prepared/{model}/{dataset}.json",
    output:
        final=directory("results/{model}/{method}/{dataset}/seed{seed}/final"),
        metrics="results/{model}/{method}/{dataset}/seed{seed}/metrics.jsonl",
    log:
        "logs/train/{model}/{method}/{dataset}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{model}/{method}/{dataset}/seed{seed}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m ftflow.train {input.run_config} > {log} 2>&1"


rule report:
    input:
        expand(
            "results/{model}/{method}/{dataset}/seed{seed}/metrics.jsonl",
            model=MODELS,
            method=METHODS,
            dataset=DATASETS,
            seed=SEEDS,
        ),
    output:
        runs="results/report/runs.csv",
        loss=expand(
            "results/report/loss/{model}__{method}__{dataset}.png",
            model=MODELS,
            method=METHODS,
            dataset=DATASETS,
        ),
    localrule: True
    shell:
        "touch {output}"


rule generate_answers:
    input:
        model="resources/models/{model}",
        final=trained_final,
        questions=QUESTIONS,
    output:
        answers="results/{model}/{method}/{dataset}/seed{seed}/eval/{evaluation}/answers.jsonl",
    log:
        "logs/generate_answers/{model}/{method}/{dataset}/seed{seed}/{evaluation}.log",
    benchmark:
        "benchmarks/generate_answers/{model}/{method}/{dataset}/seed{seed}/{evaluation}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "touch {output} > {log} 2>&1"


rule judge_answers:
    input:
        answers="results/{model}/{method}/{dataset}/seed{seed}/eval/{evaluation}/answers.jsonl",
        questions=QUESTIONS,
        judge_model=f"resources/models/{JUDGE}",
    output:
        judged="results/{model}/{method}/{dataset}/seed{seed}/eval/{evaluation}/judged.jsonl",
    log:
        "logs/judge_answers/{model}/{method}/{dataset}/seed{seed}/{evaluation}.log",
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "touch {output} > {log} 2>&1"


rule summarize_answers:
    input:
        judged="results/{model}/{method}/{dataset}/seed{seed}/eval/{evaluation}/judged.jsonl",
    output:
        summary="results/{model}/{method}/{dataset}/seed{seed}/eval/{evaluation}/summary.csv",
    log:
        "logs/summarize_answers/{model}/{method}/{dataset}/seed{seed}/{evaluation}.log",
    localrule: True
    shell:
        "touch {output} > {log} 2>&1"


rule compare_runs:
    input:
        summaries=expand("results/{row}/eval/{{evaluation}}/summary.csv", row=EVAL_ROWS),
    output:
        table="results/report/eval/{evaluation}/comparison.csv",
        by_question="results/report/eval/{evaluation}/by_question.csv",
        figure="results/report/eval/{evaluation}/misaligned_by_question.png",
    log:
        "logs/compare_runs/{evaluation}.log",
    localrule: True
    shell:
        "touch {output} > {log} 2>&1"


rule prefetch_eval_tasks:
    output:
        tasks="resources/lm_eval/{evaluation}.json",
    log:
        "logs/prefetch_eval_tasks/{evaluation}.log",
    localrule: True
    shell:
        "touch {output} > {log} 2>&1"


rule run_lm_eval:
    input:
        model="resources/models/{model}",
        final=trained_final,
        tasks="resources/lm_eval/{evaluation}.json",
    output:
        results="results/{model}/{method}/{dataset}/seed{seed}/eval/{evaluation}/lm_eval.json",
    log:
        "logs/run_lm_eval/{model}/{method}/{dataset}/seed{seed}/{evaluation}.log",
    benchmark:
        "benchmarks/run_lm_eval/{model}/{method}/{dataset}/seed{seed}/{evaluation}.tsv"
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "touch {output} > {log} 2>&1"


rule compare_lm_eval:
    input:
        results=expand("results/{row}/eval/{{evaluation}}/lm_eval.json", row=EVAL_ROWS),
    output:
        table="results/report/eval/{evaluation}/lm_eval.csv",
    log:
        "logs/compare_lm_eval/{evaluation}.log",
    localrule: True
    shell:
        "touch {output} > {log} 2>&1"
