# Train one run. checkpoints/ is deliberately not an output: Snakemake deletes the
# outputs of a failed job, and a retried job resumes from its checkpoints. The module,
# launcher line, environment and every file the job reads (e.g. the DeepSpeed JSON) come
# from the model's backend (ftflow.backends).


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


# What the backend hands its library besides run.yaml (e.g. the DeepSpeed JSON), derived
# from run.yaml and rendered into the run's launch/ folder: visible, diffable, an input.
rule render_launch_file:
    input:
        run_config=rules.configure_run.output.run_config,
    output:
        paths.RUN_LAUNCH_FILE,
    log:
        paths.log("render_launch_file", paths.RUN, "{launch_file}"),
    localrule: True
    conda:
        get_conda_env
    shell:
        "python -m ftflow.backends {input.run_config} {wildcards.launch_file} {output} "
        "> {log} 2>&1"


# A job stopped by SLURM's warning signal (with a checkpoint: ftflow.interrupt) or killed
# by its time limit fails; `retries` resubmits it (with the method's `retry_runtime`),
# and the trainer resumes from its newest complete checkpoint. The signal's lead is the
# `slurm_extra` resource (`sbatch --signal=USR1@<lead>`).
rule train:
    input:
        run_config=rules.configure_run.output.run_config,
        model=rules.prefetch_model.output.model,
        dataset=rules.prepare_dataset.output.manifest,
        parent=PARENT_FINAL,
        launch_files=get_launch_inputs,
        kernels=RUN_KERNELS,
        verdict=RUN_VERDICT,
    output:
        final=directory(paths.RUN_FINAL),
        metrics=paths.RUN_METRICS,
    log:
        paths.log("train", paths.RUN),
    benchmark:
        paths.benchmark("train", paths.RUN)
    retries: TRAIN_RETRIES
    conda:
        get_conda_env
    threads: get_train_resource("cpus_per_task")
    resources:
        nodes=get_train_resource("nodes"),
        cpus_per_task=get_train_resource("cpus_per_task"),
        mem_mb=get_train_resource("mem_mb"),
        runtime=get_train_runtime(),
        gres=get_train_resource("gres"),
        tasks_per_gpu=get_train_resource("tasks_per_gpu"),
        tasks=get_train_resource("tasks"),
        mpi=get_train_resource("mpi"),
        constraint=get_train_resource("constraint"),
        slurm_extra=get_train_signal,
    params:
        launcher=get_launcher,
        env=get_launch_env,
    shell:
        # Claimed once, before any training process starts: checkpoints made under
        # another config, data or parent (or by a finished training) are discarded.
        # params.env starts with the gate of a staged method (ftflow.health).
        "python -m ftflow.checkpoints {input.run_config} >> {log} 2>&1 && "
        "export OMP_NUM_THREADS={threads} && "
        "{params.env}"
        "{params.launcher} "
        "{input.run_config} "
        ">> {log} 2>&1"
