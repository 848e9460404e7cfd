# Evaluate every run and each base model (method `base`): sample answers, judge them,
# summarize per run, compare across runs. lm-evaluation-harness runs as its own kind.


rule generate_answers:
    input:
        model=rules.prefetch_model.output.model,
        final=get_eval_final,
        questions=get_questions_file(),
        kernels=RUN_KERNELS,
    output:
        answers=paths.EVAL_ANSWERS,
    log:
        paths.log("generate_answers", paths.RUN, "{evaluation}"),
    benchmark:
        paths.benchmark("generate_answers", paths.RUN, "{evaluation}")
    wildcard_constraints:
        evaluation=never_matches(_evals("questions")),
    conda:
        "../../envs/trl.yaml"
    threads: 1
    resources:
        gres=get_eval_resource("gres", "questions"),
        cpus_per_task=get_eval_resource("cpus_per_task", "questions"),
        mem_mb=get_eval_resource("mem_mb", "questions"),
        runtime=get_eval_resource("runtime", "questions"),
    params:
        evaluation=get_evaluation("questions"),
        model=get_model_settings(),
    script:
        "../scripts/generate_answers.py"


rule judge_answers:
    input:
        answers=rules.generate_answers.output.answers,
        questions=get_questions_file("local"),
        judge_model=get_judge_model(),
        kernels=JUDGE_KERNELS,
    output:
        judged=paths.EVAL_JUDGED,
    log:
        paths.log("judge_answers", paths.RUN, "{evaluation}"),
    wildcard_constraints:
        evaluation=never_matches(_evals("questions", judge="local")),
    conda:
        "../../envs/trl.yaml"
    resources:
        gres=get_eval_resource("gres", "questions", judge="local"),
        cpus_per_task=get_eval_resource("cpus_per_task", "questions", judge="local"),
        mem_mb=get_eval_resource("mem_mb", "questions", judge="local"),
        runtime=get_eval_resource("runtime", "questions", judge="local"),
    params:
        judge=get_judge("local"),
        judge_model=get_judge_settings(),
    script:
        "../scripts/judge_answers.py"


# An API judge needs the internet, which only the login node has: a local rule.
rule judge_answers_api:
    input:
        answers=rules.generate_answers.output.answers,
        questions=get_questions_file("api"),
    output:
        judged=paths.EVAL_JUDGED,
    log:
        paths.log("judge_answers", paths.RUN, "{evaluation}"),
    wildcard_constraints:
        evaluation=never_matches(_evals("questions", judge="api")),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    params:
        judge=get_judge("api"),
        judge_model=None,
    script:
        "../scripts/judge_answers.py"


rule summarize_answers:
    input:
        judged=paths.EVAL_JUDGED,
    output:
        summary=paths.EVAL_SUMMARY,
    log:
        paths.log("summarize_answers", paths.RUN, "{evaluation}"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    params:
        thresholds=get_thresholds(),
    script:
        "../scripts/summarize_answers.py"


rule compare_runs:
    input:
        summaries=lambda wildcards: [
            paths.EVAL_SUMMARY.format(**run.wildcards, evaluation=wildcards.evaluation)
            for run in EVAL_RUNS
        ],
    output:
        table=report(
            paths.REPORT_EVAL_TABLE,
            category="Evaluation",
            subcategory="{evaluation}",
            caption="../report/eval_table.rst",
        ),
        by_question=report(
            paths.REPORT_EVAL_QUESTIONS,
            category="Evaluation",
            subcategory="{evaluation}",
            caption="../report/eval_table.rst",
        ),
        figure=report(
            paths.REPORT_EVAL_FIGURE,
            category="Evaluation",
            subcategory="{evaluation}",
            caption="../report/eval_figure.rst",
        ),
    log:
        paths.log("compare_runs", "{evaluation}"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/compare_runs.py"


# lm-evaluation-harness: task data is fetched here, on the login node, into resources/;
# the evaluation itself runs offline on a compute node.
rule prefetch_eval_tasks:
    output:
        tasks=paths.LM_EVAL_TASKS,
    log:
        paths.log("prefetch_eval_tasks", "{evaluation}"),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    params:
        evaluation=_evaluation,
    script:
        "../scripts/prefetch_eval_tasks.py"


rule run_lm_eval:
    input:
        model=rules.prefetch_model.output.model,
        final=get_eval_final,
        tasks=rules.prefetch_eval_tasks.output.tasks,
        kernels=RUN_KERNELS,
    output:
        results=paths.EVAL_LM_EVAL,
    log:
        paths.log("run_lm_eval", paths.RUN, "{evaluation}"),
    benchmark:
        paths.benchmark("run_lm_eval", paths.RUN, "{evaluation}")
    wildcard_constraints:
        evaluation=never_matches(_evals("lm_eval")),
    conda:
        "../../envs/trl.yaml"
    resources:
        gres=get_eval_resource("gres", "lm_eval"),
        cpus_per_task=get_eval_resource("cpus_per_task", "lm_eval"),
        mem_mb=get_eval_resource("mem_mb", "lm_eval"),
        runtime=get_eval_resource("runtime", "lm_eval"),
    params:
        evaluation=get_evaluation("lm_eval"),
        model=get_model_settings(),
    script:
        "../scripts/run_lm_eval.py"


rule compare_lm_eval:
    input:
        results=lambda wildcards: [
            paths.EVAL_LM_EVAL.format(**run.wildcards, evaluation=wildcards.evaluation)
            for run in EVAL_RUNS
        ],
    output:
        table=report(
            paths.REPORT_LM_EVAL_TABLE,
            category="Evaluation",
            subcategory="{evaluation}",
            caption="../report/lm_eval_table.rst",
        ),
    log:
        paths.log("compare_lm_eval", "{evaluation}"),
    localrule: True
    conda:
        "../../envs/report.yaml"
    script:
        "../scripts/compare_lm_eval.py"
