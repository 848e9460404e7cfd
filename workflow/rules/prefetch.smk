# Prefetch: local rules, run where Snakemake runs (the login node, with internet).
# They pin what they fetch (commit sha, sha256) and fill resources/; every compute job
# afterwards runs offline.


rule prefetch_model:
    input:
        get_model_source,
    output:
        model=directory(paths.MODEL_DIR),
    params:
        spec=lambda wildcards: config["models"][wildcards.model],
    log:
        paths.log("prefetch_model", "{model}"),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    script:
        "../scripts/prefetch_model.py"


rule prefetch_dataset:
    input:
        get_dataset_source,
    output:
        raw=paths.DATASET_RAW,
    params:
        source=lambda wildcards: config["datasets"][wildcards.dataset]["source"],
    log:
        paths.log("prefetch_dataset", "{dataset}"),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    script:
        "../scripts/prefetch_dataset.py"
