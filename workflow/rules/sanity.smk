# Sanity stages (ftflow.health): a method's `stages` each train the run for real, for
# max_steps, on their own resources, under results/<run>/sanity/<stage>/, and write a
# verdict. The next stage and the full training start only after a healthy verdict.


rule configure_stage:
    output:
        run_config=paths.SANITY_CONFIG,
    log:
        paths.log("configure_stage", paths.RUN, "{stage}"),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    params:
        resolved=get_resolved_stage,
    script:
        "../scripts/configure_run.py"


rule render_stage_launch_file:
    input:
        run_config=rules.configure_stage.output.run_config,
    output:
        paths.SANITY_LAUNCH_FILE,
    log:
        paths.log("render_launch_file", paths.RUN, "{stage}", "{launch_file}"),
    localrule: True
    conda:
        get_conda_env
    shell:
        "python -m ftflow.backends {input.run_config} {wildcards.launch_file} {output} "
        "> {log} 2>&1"


# Trains the stage; the verdict is written whether the stage is healthy or not (an
# out-of-memory or a NaN loss is a verdict); a crash fails the job like any other.
rule sanity:
    input:
        run_config=rules.configure_stage.output.run_config,
        model=rules.prefetch_model.output.model,
        dataset=rules.prepare_dataset.output.manifest,
        parent=PARENT_FINAL,
        launch_files=get_stage_launch_inputs,
        kernels=RUN_KERNELS,
        previous=get_previous_verdict,
    output:
        verdict=paths.SANITY_VERDICT,
    log:
        paths.log("sanity", paths.RUN, "{stage}"),
    benchmark:
        paths.benchmark("sanity", paths.RUN, "{stage}")
    retries: TRAIN_RETRIES
    conda:
        get_conda_env
    threads: get_stage_resource("cpus_per_task")
    resources:
        nodes=get_stage_resource("nodes"),
        cpus_per_task=get_stage_resource("cpus_per_task"),
        mem_mb=get_stage_resource("mem_mb"),
        runtime=get_stage_runtime(),
        gres=get_stage_resource("gres"),
        tasks_per_gpu=get_stage_resource("tasks_per_gpu"),
        tasks=get_stage_resource("tasks"),
        mpi=get_stage_resource("mpi"),
        constraint=get_stage_resource("constraint"),
        slurm_extra=get_stage_signal,
    params:
        gate=get_stage_gate,
        launcher=get_stage_launcher,
        env=get_stage_launch_env,
    shell:
        "{params.gate}"
        "python -m ftflow.checkpoints {input.run_config} >> {log} 2>&1 && "
        "export OMP_NUM_THREADS={threads} && "
        "{params.env}"
        "start=$SECONDS && "
        "{{ {params.launcher} {input.run_config} >> {log} 2>&1 && status=0 || status=$?; }} && "
        "python -m ftflow.health verdict {input.run_config} {log} {output.verdict} "
        "--exit-code $status --seconds $((SECONDS - start)) >> {log} 2>&1"
