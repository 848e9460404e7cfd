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
