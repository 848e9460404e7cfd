# Config validation, wildcard constraints and every input function.

import functools
import inspect
import json
import os
import re
import sys
from pathlib import Path

import snakemake.common
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))
# This Snakefile decides which ftflow its jobs run (below); a value inherited from the
# shell (e.g. from another workflow's Snakemake) must not veto its own import.
os.environ.pop("FTFLOW_CODE", None)

from ftflow import backends, checkout, datafiles, paths  # noqa: E402
from ftflow import config as ftconfig  # noqa: E402
from ftflow import interrupt, kernels, launch, tracking  # noqa: E402

# Every job imports the ftflow this Snakefile imported (its own src/, else the installed
# one), never another clone that happens to be installed: see ftflow.checkout.
os.environ.update(checkout.job_env())

# Inside a SLURM job, the warning signal before the time limit is the trainer's alone
# (ftflow.interrupt): this Snakemake, and the job's shell it starts, ignore it.
interrupt.ignore_in_snakemake()

# A training job that stopped (e.g. on SLURM's warning signal, with a checkpoint) is
# retried by the Snakemake that submitted it, with a new time limit. A rule's `retries`
# also apply inside the SLURM job, where Snakemake would rerun the job in the seconds
# left before the limit: there they are none.
TRAIN_RETRIES = 2 if workflow.is_main_process else 0

# Friendly errors first (key path + allowed values), then snakemake's own pass.
try:
    ftconfig.validate(config)
except ftconfig.ConfigError as error:
    raise ValueError(f"invalid config: {error}") from None
validate(config, "../schemas/config.schema.yaml")

# A file the config names must exist before any job runs; planning and drawing
# (-n, --dag, --rulegraph, python -m ftflow.plan) only warn (ftflow.datafiles).
for _problem in datafiles.check_config_files(
    config, datafiles.is_planning(sys.argv, os.environ)
):
    print(f"[ftflow] warning: {_problem}", file=sys.stderr)
# Only while planning can a named file be missing: the DAG is still drawn without it.
MISSING_FILES = {
    path for _key, path in datafiles.config_files(config) if not Path(path).exists()
}


def _present(files):
    return [f for f in files if f not in MISSING_FILES]


# Snakemake reads the signature of every function a rule names (input, params, resources,
# threads, conda) each time it calls it, to learn which of wildcards, input, threads,
# attempt… it takes: two or three `inspect.signature` calls per function and job, at grid
# scale the largest part of ftflow's DAG build beyond a bare Snakefile's. Snakemake's own
# helpers (snakemake.ioutils) record the parameters on the function once instead; so does
# job_function. Without that hook (another Snakemake) it changes nothing.
_record_params = getattr(snakemake.common, "overwrite_function_params", None)


def job_function(func):
    """Mark a function Snakemake calls per job: its parameters are read once, here."""
    if _record_params is not None:
        _record_params(func, inspect.signature(func).parameters)
    return func


def constant_or(values, func):
    """The one value when ``values`` (the function's value in every case its wildcards can
    take) are all equal: then Snakemake evaluates nothing per job. Else ``func``."""
    values = list(values)
    if values and all(value == values[0] for value in values):
        return values[0]
    return job_function(func)


RUNS = ftconfig.runs(config)
CELLS = list(ftconfig.iter_cells(config))
# Every method a training job can have (the grid's, or another target's on the command
# line): a constant for all of a rule's jobs must hold for each of them.
METHODS = list(config["methods"].values())


def _alternatives(names):
    return "|".join(sorted(re.escape(str(n)) for n in names))


wildcard_constraints:
    model=_alternatives(config["models"]),
    method=_alternatives([*config["methods"], ftconfig.BASE_METHOD]),
    dataset=_alternatives([*config["datasets"], ftconfig.BASE_DATASET]),
    seed=r"\d+",
    launch_file=r"[A-Za-z0-9_.-]+",
    stage=_alternatives(
        {n for m in config["methods"].values() for n in ftconfig.stage_names(m)}
    )
    or "(?!x)x",
    evaluation=_alternatives(config.get("evaluations", {})) or "(?!x)x",


def _run(wildcards):
    return ftconfig.Run(
        wildcards.model, wildcards.method, wildcards.dataset, int(wildcards.seed)
    )


def _method(wildcards):
    return config["methods"][wildcards.method]


@job_function
def get_model_source(wildcards):
    """Local files a model is built or copied from (so edits trigger a rebuild)."""
    model = config["models"][wildcards.model]
    source = model["source"]
    files = [model["chat_template"]] if model.get("chat_template") else []
    if "path" in source:
        files.append(source["path"])
    if "tiny" in source:
        files += [
            config["datasets"][d]["source"]["path"] for d in source["tiny"]["corpus"]
        ]
    return _present(files)


@job_function
def get_dataset_source(wildcards):
    source = config["datasets"][wildcards.dataset]["source"]
    return _present([source["path"]] if "path" in source else [])


@job_function
def get_prepare_settings(wildcards):
    dataset = config["datasets"][wildcards.dataset]
    return {k: dataset[k] for k in ("format", "fraction", "sample_seed", "max_length")}


@job_function
def get_resolved_run(wildcards):
    return ftconfig.resolve_run(config, _run(wildcards))


@job_function
def get_parent_final(wildcards):
    parent = ftconfig.parent_run(config, _run(wildcards))
    if parent is None:
        return []
    return str(
        paths.final_dir(parent.model, parent.method, parent.dataset, parent.seed)
    )


# Inputs that most configs give every job alike (no DPO parent, no sanity stage, no
# kernels: none) are constants there, so that Snakemake calls nothing for them per job;
# else the function.
PARENT_FINAL = get_parent_final if any(m["kind"] == "dpo" for m in METHODS) else []


def _launch(wildcards):
    """The backend's launch of this run: command, environment, files it reads (built once
    per run: four of the train rule's directives read it)."""
    return _run_launch(_run(wildcards))


@functools.cache
def _run_launch(run):
    backend = backends.get(config["models"][run.model]["backend"])
    return backend.launch(config["methods"][run.method], run)


@job_function
def get_launcher(wildcards):
    return _launch(wildcards).command


@job_function
def get_launch_env(wildcards):
    """The shell words before the launcher: the gate of a staged method (its last stage's
    verdict must be healthy), the backend's variables, the kernels' paths."""
    return (
        get_run_gate(wildcards)
        + _launch(wildcards).env_exports()
        + kernels.env_exports(get_kernel_manifests(wildcards))
    )


@job_function
def get_launch_inputs(wildcards):
    return list(_launch(wildcards).inputs)


@job_function
def get_conda_env(wildcards):
    return str(Path(workflow.basedir) / _launch(wildcards).conda_env)


def get_train_resource(name, default=None):
    """One training resource (see ftflow.launch.slurm_resources), or its threads.

    A constant when every method of the config asks for the same value, so Snakemake
    evaluates nothing per job (a resource function costs it a call and two signature
    inspections per job, even marked by job_function); else a function of the job's method.
    """

    def resource(wildcards):
        return launch.slurm_resources(_method(wildcards)).get(name, default)

    values = [launch.slurm_resources(m).get(name, default) for m in METHODS]
    return constant_or(values, resource)


def get_train_runtime():
    """Minutes; later attempts (after a time-limit kill) may ask for more (retry_runtime).
    A constant when every method of the config asks for the same minutes on every attempt.
    """

    def runtime(wildcards, attempt):
        res = _method(wildcards)["resources"]
        return (
            res["runtime"] if attempt == 1 else res.get("retry_runtime", res["runtime"])
        )

    every = [m.get("resources") or {} for m in METHODS]
    if not all("runtime" in res for res in every):
        return job_function(runtime)
    values = [res[k] for res in every for k in ("runtime", "retry_runtime") if k in res]
    return constant_or(values, runtime)


def _signal_option(wildcards, attempt, method):
    """sbatch's --signal for a training job (ftflow.interrupt): the lead from the
    longest save measured by this run's attempts and its sanity stages."""
    res = method.get("resources") or {}
    runtime = res.get("runtime", 60)
    if attempt > 1:
        runtime = res.get("retry_runtime", runtime)
    run = _run(wildcards)
    folders = [paths.RunPaths(run).checkpoints] + [
        paths.RunPaths(run, name).checkpoints
        for name in ftconfig.stage_names(_method(wildcards))
    ]
    measured = interrupt.measured_save_seconds(folders)
    lead = interrupt.lead_seconds(res.get("signal_lead", "auto"), runtime, measured)
    return interrupt.slurm_option(lead)


@job_function
def get_train_signal(wildcards, attempt):
    return _signal_option(wildcards, attempt, _method(wildcards))


@job_function
def get_stage_signal(wildcards, attempt):
    return _signal_option(wildcards, attempt, _stage_method(wildcards))


def run_targets(pattern):
    return [pattern.format(**run.wildcards) for run in RUNS]


# ------------------------------------------------------------------- evaluation

EVALUATIONS = config.get("evaluations", {})
EVAL_RUNS = ftconfig.eval_runs(config)


def _evals(kind=None, judge=None):
    return sorted(
        name
        for name, ev in EVALUATIONS.items()
        if (kind is None or ev["kind"] == kind)
        and (judge is None or ev.get("judge", {}).get("kind") == judge)
    )


@job_function
def _evaluation(wildcards):
    return EVALUATIONS[wildcards.evaluation]


@job_function
def get_eval_final(wildcards):
    """The trained model of a run; the base row evaluates the prefetched model alone."""
    if wildcards.method == ftconfig.BASE_METHOD:
        return []
    return str(
        paths.final_dir(
            wildcards.model, wildcards.method, wildcards.dataset, wildcards.seed
        )
    )


def _questions_file(name):
    """The local question file, or the copy prefetch_questions fetched from its URL."""
    questions = EVALUATIONS[name]["questions"]
    if isinstance(questions, dict):
        return paths.QUESTIONS_FETCHED.format(evaluation=name)
    return [] if questions in MISSING_FILES else questions


def get_questions_file(judge=None):
    """The question file of the job's evaluation (of kind questions, judged by ``judge``):
    a constant when all of them read the same file."""

    def questions_file(wildcards):
        return _questions_file(wildcards.evaluation)

    names = _evals("questions", judge)
    return constant_or([_questions_file(name) for name in names], questions_file)


def per_evaluation(value, kind=None, judge=None):
    """``value`` (a function of an evaluation's config) of the job's evaluation, for a rule
    whose evaluation wildcard takes the evaluations of ``kind`` judged by ``judge`` (by
    default: all): a constant when every one of them gives the same."""

    def of_job(wildcards):
        return value(_evaluation(wildcards))

    return constant_or([value(EVALUATIONS[e]) for e in _evals(kind, judge)], of_job)


def _load_settings(model):
    """How a model loads for evaluation: its config's dtype and remote code."""
    return {k: config["models"][model].get(k) for k in ("dtype", "trust_remote_code")}


def get_model_settings():
    """How the run's model loads: a constant when every model loads alike."""

    def settings(wildcards):
        return _load_settings(wildcards.model)

    return constant_or([_load_settings(m) for m in config["models"]], settings)


def get_evaluation(kind):
    return per_evaluation(lambda evaluation: evaluation, kind)


def get_judge(judge):
    return per_evaluation(lambda evaluation: evaluation["judge"], "questions", judge)


def get_judge_settings():
    """How the local judge loads: its own model config's dtype and remote code."""
    return per_evaluation(
        lambda evaluation: _load_settings(evaluation["judge"]["model"]),
        "questions",
        judge="local",
    )


def get_judge_model():
    return per_evaluation(
        lambda evaluation: str(paths.model_dir(evaluation["judge"]["model"])),
        "questions",
        judge="local",
    )


def get_thresholds():
    """What makes an answer misaligned: alignment below, coherence above (only the
    evaluations of kind questions have judged answers to summarize)."""
    return per_evaluation(
        lambda evaluation: {
            k: evaluation[k] for k in ("aligned_below", "coherent_above")
        },
        "questions",
    )


def get_eval_resource(name, kind, judge=None):
    """One resource of an evaluation job: a constant when every evaluation the rule runs
    (of ``kind``, judged by ``judge``) asks for the same value (see get_train_resource).
    """

    def of(evaluation):
        res = evaluation.get("resources") or {}
        return launch.slurm_resources({"resources": res}).get(name)

    return per_evaluation(of, kind, judge)


def eval_targets(pattern, kind):
    return [
        pattern.format(**run.wildcards, evaluation=name)
        for name in _evals(kind)
        for run in EVAL_RUNS
    ]


def never_matches(names):
    return _alternatives(names) if names else "(?!x)x"


# ---------------------------------------------------------------------- kernels

KERNEL_PACKAGES = kernels.packages(config)
# Probes the toolchain (imports torch) only when some model needs kernels.
KERNEL_BUILDS = kernels.all_builds(config) if kernels.needed(config) else {}
KERNEL_ORIGIN = str(Path(kernels.KERNEL_SOURCE).with_suffix("").with_suffix(".json"))
KERNEL_RESOURCES = kernels.slurm_resources(config)


def kernel_spec(kernel):
    """A kernel as plain data, for a job's params."""
    return {
        "name": kernel.name,
        "source": dict(kernel.source),
        "env_prefix": kernel.env_prefix,
        "imports": list(kernel.imports),
        "cuda": kernel.cuda,
        "patch": kernel.patch,
    }


def kernel_origin(build):
    return KERNEL_ORIGIN.format(kernel=build.kernel.name)


def _kernel_build(wildcards):
    return KERNEL_BUILDS[
        kernels.KERNEL_MANIFEST.format(
            toolchain=wildcards.toolchain, build=wildcards.build
        )
    ]


@job_function
def get_kernel_source_files(wildcards):
    """A source folder of the user's: its files, so that an edit rebuilds the kernel."""
    source = KERNEL_PACKAGES[wildcards.kernel].source
    if "path" not in source:
        return []
    return sorted(
        str(p)
        for p in Path(source["path"]).rglob("*")
        if kernels.is_source_file(p, source["path"])
    )


MODEL_KERNELS = {
    model: [b.manifest for b in kernels.builds(config, model)] if KERNEL_BUILDS else []
    for model in config["models"]
}


@job_function
def get_kernel_manifests(wildcards):
    """The kernel builds the run's model needs (none for most models)."""
    return MODEL_KERNELS[wildcards.model]


@job_function
def get_judge_kernels(wildcards):
    return MODEL_KERNELS[_evaluation(wildcards)["judge"]["model"]]


RUN_KERNELS = constant_or(MODEL_KERNELS.values(), get_kernel_manifests)
JUDGE_KERNELS = constant_or(MODEL_KERNELS.values(), get_judge_kernels)


# ----------------------------------------------------------------------- stages


def _stage(wildcards):
    names = ftconfig.stage_names(_method(wildcards))
    return names.index(wildcards.stage), names


def _stage_method(wildcards):
    return ftconfig.named_stage_method(_method(wildcards), wildcards.stage)


@job_function
def get_resolved_stage(wildcards):
    return ftconfig.resolve_stage(config, _run(wildcards), wildcards.stage)


def _stage_launch(wildcards):
    backend = backends.get(config["models"][wildcards.model]["backend"])
    return backend.launch(_stage_method(wildcards), _run(wildcards), wildcards.stage)


@job_function
def get_stage_launcher(wildcards):
    return _stage_launch(wildcards).command


@job_function
def get_stage_launch_env(wildcards):
    return _stage_launch(wildcards).env_exports() + kernels.env_exports(
        get_kernel_manifests(wildcards)
    )


@job_function
def get_stage_launch_inputs(wildcards):
    return list(_stage_launch(wildcards).inputs)


# Every sanity stage of the config's methods, as it trains (ftflow.config.stage_method).
STAGE_METHODS = [
    ftconfig.stage_method(method, stage)
    for method in METHODS
    for stage in ftconfig.stages(method)
]


def get_stage_resource(name):
    """One resource of a sanity stage's job: a constant when every stage asks for the
    same (see get_train_resource)."""

    def resource(wildcards):
        return launch.slurm_resources(_stage_method(wildcards)).get(name)

    values = [launch.slurm_resources(m).get(name) for m in STAGE_METHODS]
    return constant_or(values, resource)


def _stage_runtime(method, attempt):
    res = method["resources"]
    runtime = res.get("runtime", 60)
    return runtime if attempt == 1 else res.get("retry_runtime", runtime)


def get_stage_runtime():
    """Minutes; a retry after a time-limit kill may ask for more (retry_runtime). A
    constant when every stage asks for the same minutes on every attempt."""

    def runtime(wildcards, attempt):
        return _stage_runtime(_stage_method(wildcards), attempt)

    values = [_stage_runtime(m, a) for m in STAGE_METHODS for a in (1, 2)]
    return constant_or(values, runtime)


def _verdict(wildcards, stage):
    return paths.SANITY_VERDICT.format(**_run(wildcards).wildcards, stage=stage)


def _gate(wildcards, stage, log):
    accept = stage in (_method(wildcards).get("accept_unhealthy") or [])
    flag = " --accept" if accept else ""
    verdict = _verdict(wildcards, stage)
    return f"python -m ftflow.health gate {verdict}{flag} >> {log} 2>&1 && "


@job_function
def get_previous_verdict(wildcards):
    """A stage after the first waits for the verdict of the stage before it."""
    index, names = _stage(wildcards)
    return _verdict(wildcards, names[index - 1]) if index else []


@job_function
def get_stage_gate(wildcards):
    index, names = _stage(wildcards)
    log = paths.RunPaths(_run(wildcards), wildcards.stage).log()
    return _gate(wildcards, names[index - 1], log) if index else ""


@job_function
def get_run_verdict(wildcards):
    """The full training waits for the verdict of the method's last stage."""
    names = ftconfig.stage_names(_method(wildcards))
    return _verdict(wildcards, names[-1]) if names else []


RUN_VERDICT = get_run_verdict if STAGE_METHODS else []


@job_function
def get_run_gate(wildcards):
    names = ftconfig.stage_names(_method(wildcards))
    log = paths.RunPaths(_run(wildcards)).log()
    return _gate(wildcards, names[-1], log) if names else ""


def stage_targets(pattern):
    return [
        pattern.format(**run.wildcards, stage=stage["name"])
        for run in RUNS
        for stage in ftconfig.stages(config["methods"][run.method])
    ]


# --------------------------------------------------------------------- tracking

# Every training job reads where to track from here (ftflow.tracking.ENV): not a param,
# so that adding W&B to a finished grid retrains nothing.
os.environ[tracking.ENV] = json.dumps(ftconfig.resolve_tracking(config))


@job_function
def get_finished_wandb_dirs(wildcards):
    """The wandb/ folders of finished trainings and sanity stages. As a param, a newly
    finished run changes it, so Snakemake syncs again (and trains nothing for it)."""
    done = [
        paths.RunPaths(run) for run in RUNS if paths.RunPaths(run).metrics.is_file()
    ]
    done += [
        paths.RunPaths(run, stage["name"])
        for run in RUNS
        for stage in ftconfig.stages(config["methods"][run.method])
        if paths.RunPaths(run, stage["name"]).verdict.is_file()
    ]
    return sorted(str(p.wandb) for p in done if p.wandb.is_dir())


# ---------------------------------------------------------------------- publish

PUBLISH = ftconfig.publish_targets(config)


def _publish_target(wildcards):
    run = _run(wildcards)
    if run not in PUBLISH:
        raise ValueError(
            f"run {run} is not in the config's publish.runs (allowed: "
            + (", ".join(str(r) for r in PUBLISH) or "none")
            + ")"
        )
    return PUBLISH[run]


@job_function
def get_publish_evaluations(wildcards):
    """Every evaluation's per-run result: the card reports each with its interval."""
    outputs = {"questions": paths.EVAL_SUMMARY, "lm_eval": paths.EVAL_LM_EVAL}
    return [
        outputs[ev["kind"]].format(**_run(wildcards).wildcards, evaluation=name)
        for name, ev in sorted(EVALUATIONS.items())
    ]


@job_function
def get_publish_data(wildcards):
    """The run's dataset, then its parent runs' (a DPO run's SFT parent), as trained on."""
    data, run = [], _run(wildcards)
    while run is not None:
        data.append(
            {
                "name": run.dataset,
                "run": str(run),
                "path": str(paths.dataset_raw(run.dataset)),
                "source": config["datasets"][run.dataset]["source"],
            }
        )
        run = ftconfig.parent_run(config, run)
    return data


@job_function
def get_publish_records(wildcards):
    if not PUBLISH:
        raise ValueError(
            "nothing to publish: the config has no publish block "
            "(publish.organisation and publish.runs)"
        )
    return [paths.RUN_PUBLISHED.format(**run.wildcards) for run in PUBLISH]
