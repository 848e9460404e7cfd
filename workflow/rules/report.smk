# Compare every run: one table, one loss figure per grid cell (seeds overlaid).


rule report:
    input:
        metrics=run_targets(paths.RUN_METRICS),
    output:
        runs=report(
            paths.REPORT_RUNS, category="Training", caption="../report/runs.rst"
        ),
        loss=[
            report(
                str(paths.report_loss(*cell)),
                category="Loss curves",
                caption="../report/loss.rst",
            )
            for cell in CELLS
        ],
    log:
        paths.log("report", "report"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report.py"


# The sanity stages of every staged run: verdicts, throughput, scaling, projections.
rule report_stages:
    input:
        verdicts=stage_targets(paths.SANITY_VERDICT),
    output:
        table=report(
            paths.REPORT_STAGES, category="Training", caption="../report/stages.rst"
        ),
        figure=report(
            paths.REPORT_STAGES_FIGURE,
            category="Training",
            caption="../report/stages.rst",
        ),
    log:
        paths.log("report", "stages"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/report_stages.py"
