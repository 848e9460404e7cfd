# Train one run. checkpoints/ is deliberately not an output: Snakemake deletes the
# outputs of a failed job, and a retried job resumes from its checkpoints.


rule configure_run:
    output:
        run_config=paths.RUN_CONFIG,
    log:
        paths.log("configure_run", paths.RUN),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    params:
        resolved=get_resolved_run,
    script:
        "../scripts/configure_run.py"


rule train:
    input:
        run_config=rules.configure_run.output.run_config,
        model=rules.prefetch_model.output.model,
        dataset=rules.prepare_dataset.output.manifest,
        parent=get_parent_final,
    output:
        final=directory(paths.RUN_FINAL),
        metrics=paths.RUN_METRICS,
    log:
        paths.log("train", paths.RUN),
    benchmark:
        paths.benchmark("train", paths.RUN)
    conda:
        "../../envs/trl.yaml"
    threads: get_train_threads
    resources:
        mem_mb=get_train_mem,
        runtime=get_train_runtime,
    params:
        launcher=get_launcher,
    shell:
        "export OMP_NUM_THREADS={threads} && "
        "{params.launcher} "
        "{input.run_config} "
        "> {log} 2>&1"
