# Plan: every job the workflow would run, with nodes × GPUs × runtime, GPU-hours and an
# optional cost; nothing else runs. The plan depends on the state of every other output,
# which no input can express, so a fresh one is asked for with
#   snakemake plan --forcerun plan --cores 1
# (or, before anything exists and without taking the lock:  python -m ftflow.plan).


rule plan:
    output:
        csv=f"{paths.RESULTS}/plan/plan.csv",
    log:
        paths.log("plan", "plan"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        snakefile=workflow.main_snakefile,
    script:
        "../scripts/plan.py"
