# Tracking (ftflow.tracking): training jobs write TensorBoard event files and, when
# tracking.wandb is set, offline W&B runs into their run folders. sync_tracking uploads
# the offline runs of finished trainings from the login node (it needs the network), so
# it is no part of `all`: ask for it by name, `snakemake --cores 1 sync_tracking`.


rule sync_tracking:
    output:
        synced=paths.TRACKING_SYNCED,
    log:
        paths.log("sync_tracking", "wandb"),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    params:
        folders=get_finished_wandb_dirs,
        wandb=config["tracking"].get("wandb", {}),
    script:
        "../scripts/sync_tracking.py"
