# Publish: push the runs named in the config's `publish:` block to the Hugging Face Hub,
# each with a model card of its provenance (ftflow.publish). Local rules, because only the
# login node has the internet; not part of `all`, asked for by name:
#   snakemake --cores 1 publish
# The job reads HF_TOKEN from its environment itself: the token is no param, no input and
# no word of a command line, so it reaches neither Snakemake's metadata nor a log.


rule publish_run:
    input:
        final=paths.RUN_FINAL,
        run_config=paths.RUN_CONFIG,
        model=rules.prefetch_model.output.model,
        evaluations=get_publish_evaluations,
        datasets=lambda wildcards: [d["path"] for d in get_publish_data(wildcards)],
    output:
        record=paths.RUN_PUBLISHED,
    log:
        paths.log("publish", paths.RUN),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    params:
        repo_id=lambda wildcards: _publish_target(wildcards).repo_id,
        private=lambda wildcards: _publish_target(wildcards).private,
        datasets=get_publish_data,
    script:
        "../scripts/publish_run.py"


rule publish:
    input:
        records=get_publish_records,
    localrule: True
