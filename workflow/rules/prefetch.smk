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
