# Validate, sample, tokenise: one cache entry per (raw content, tokenizer, settings).


rule prepare_dataset:
    input:
        raw=rules.prefetch_dataset.output.raw,
        model=rules.prefetch_model.output.model,
    output:
        manifest=paths.PREPARED,
    log:
        paths.log("prepare_dataset", "{model}", "{dataset}"),
    conda:
        "../../envs/trl.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        settings=get_prepare_settings,
        source=lambda wildcards: config["datasets"][wildcards.dataset]["source"],
    script:
        "../scripts/prepare_dataset.py"
