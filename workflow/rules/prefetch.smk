# Prefetch: local rules, run where Snakemake runs (the login node, with internet).
# They pin what they fetch (commit sha, sha256) and fill resources/; every compute job
# afterwards runs offline.


rule prefetch_model:
    input:
        get_model_source,
    output:
        model=directory(paths.MODEL_DIR),
    log:
        paths.log("prefetch_model", "{model}"),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    params:
        spec=lambda wildcards: config["models"][wildcards.model],
    script:
        "../scripts/prefetch_model.py"


rule prefetch_dataset:
    input:
        get_dataset_source,
    output:
        raw=paths.DATASET_RAW,
    log:
        paths.log("prefetch_dataset", "{dataset}"),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    params:
        source=lambda wildcards: config["datasets"][wildcards.dataset]["source"],
    script:
        "../scripts/prefetch_dataset.py"


# A question file named by URL (evaluations.<name>.questions: {url, sha256}), pinned like
# a dataset URL: by its sha256, or by ftflow.lock.yaml at the first fetch.
rule prefetch_questions:
    output:
        questions=paths.QUESTIONS_FETCHED,
    log:
        paths.log("prefetch_questions", "{evaluation}"),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    params:
        source=lambda wildcards: config["evaluations"][wildcards.evaluation][
            "questions"
        ],
    script:
        "../scripts/prefetch_dataset.py"
