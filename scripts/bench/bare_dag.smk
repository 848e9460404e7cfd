# The bare baseline of bench_dag.py: the same DAG shape as ftflow's (same rules, same
# path patterns, same number of jobs) with no ftflow logic — no config validation, no
# input functions, no resolved-run params. bench_dag.py writes grid.yaml next to it.

import yaml

with open("grid.yaml") as handle:
    GRID = yaml.safe_load(handle)

MODELS, METHODS = GRID["models"], GRID["methods"]
DATASETS, SEEDS = GRID["datasets"], GRID["seeds"]


wildcard_constraints:
    seed=r"\d+",


rule all:
    input:
        "results/report/runs.csv",


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
