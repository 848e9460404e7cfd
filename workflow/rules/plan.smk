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


# Preflight: `snakemake --profile slurm preflight` asks SLURM (`sbatch --test-only`) about
# every compute job the plan would submit, with the sbatch options the executor plugin
# would use, and fails listing the impossible ones; nothing is submitted
# (ftflow.plan.preflight). No output: the target runs whenever it is named, and its
# report (results/plan/preflight.json, .txt) survives a failure, which would delete an
# output.

from ftflow.plan import preflight  # noqa: E402


rule preflight:
    log:
        paths.log("preflight", "preflight"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        snakefile=workflow.main_snakefile,
        # the running snakemake's profile settings, known once it executes
        settings=lambda wildcards: preflight.settings_of(workflow),
    script:
        "../scripts/preflight.py"
