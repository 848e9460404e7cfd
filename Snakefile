# ftflow — the whole life of a fine-tuning experiment as one DAG.
#
# Paths (computed in one place, src/ftflow/paths.py):
#   resources/models/{model}/                   prefetched or built weights + tokenizer
#   resources/datasets/{dataset}/data.jsonl     prefetched raw data
#   resources/prepared/{model}/{dataset}.json   tokenised-cache manifest
#   results/{model}/{method}/{dataset}/seed{seed}/
#       run.yaml  checkpoints/  final/  metrics.jsonl
#       eval/{evaluation}/  answers.jsonl  judged.jsonl  summary.csv
#   results/{model}/base/none/seed{seed}/eval/…  the untrained model's row
#   results/report/                             runs.csv, loss curves
#   logs/{rule}/…, benchmarks/{rule}/…          mirror the wildcards
#
#   snakemake --cores 2                  the embedded default (config/config.yaml)
#   snakemake --profile slurm            the same DAG on a SLURM cluster
#   snakemake --cores 1 publish          push the config's publish.runs to the Hub
#   snakemake --cores 1 sync_tracking    upload the offline W&B runs (login node)


from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless a config is named on the command line: an experiment's
# --configfile replaces it instead of being merged into it (a merge would silently keep
# the default's models, datasets and method keys the experiment does not set).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/prefetch.smk"
include: "workflow/rules/kernels.smk"
include: "workflow/rules/dataset.smk"
include: "workflow/rules/sanity.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/publish.smk"
include: "workflow/rules/tracking.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
        expand(
            [paths.REPORT_EVAL_TABLE, paths.REPORT_EVAL_FIGURE],
            evaluation=_evals("questions"),
        ),
        expand(paths.REPORT_LM_EVAL_TABLE, evaluation=_evals("lm_eval")),
        rules.report_stages.output if stage_targets(paths.SANITY_VERDICT) else [],
