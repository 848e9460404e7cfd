"""Publish a finished run to the Hugging Face Hub, with a model card of its provenance.

The ``publish_run`` rule (``workflow/rules/publish.smk``) calls :func:`main` on the login node
for each run of the config's ``publish:`` block. One commit makes the repo
``<organisation>/<name>`` (:func:`ftflow.config.repo_id`) hold exactly:

- every file of the run's ``final/`` with its bytes unchanged (hidden files such as
  Snakemake's ``.snakemake_timestamp`` left out); remote files from an earlier publish that
  ``final/`` no longer has are deleted (``.gitattributes``, which the Hub manages, is kept);
- ``README.md``: the model card (:func:`model_card`, a pure function) in place of any
  ``README.md`` the trainer wrote. Its YAML front matter has ``library_name`` (``peft`` for an
  adapter, else ``transformers``), ``tags`` and, for a base model from the Hub,
  ``base_model``; its sections record the evaluation results with their intervals, each
  dataset's sha256 (the bytes trained on, the parent run's included), the resolved config
  (``run.yaml`` verbatim), the files and the ftflow version.

What was pushed is recorded in ``results/<run>/published.json``: repo id and URL, commit id and
URL, each file's sha256 and size, what was deleted — never the token.

Assumes: ``huggingface_hub`` is imported only here, after the job's stderr went to its log
(its own logger binds the stream at import); ``HF_ENDPOINT`` chooses the Hub, read by
``huggingface_hub`` at import time.

The token comes from ``HF_TOKEN`` in the environment and nowhere else (not a saved login, not
a parameter): it is handed to ``huggingface_hub``, which sends it only in the Authorization
header, and its debug log prints that header as ``<TOKEN>``.

Raises :class:`PublishError`: no ``HF_TOKEN`` (before any request), offline mode, an empty
``final/``, or the Hub refusing a request (naming the repo and the answer).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from ftflow import files, paths, spec
from ftflow import final as final_lib

TOKEN_ENV = "HF_TOKEN"
CARD_NAME = "README.md"
# The Hub creates and manages this one; a publish never deletes it.
KEPT_REMOTE = frozenset({".gitattributes"})
# lm-eval reports a standard error; the card shows value ± 1.96 stderr (normal, 95 %).
Z95 = 1.959963984540054
BACKEND_TAGS = {"trl": "trl", "automodel": "nemo-automodel"}


class PublishError(RuntimeError):
    """Publishing a run failed; the message names what to fix."""


def ftflow_version() -> str:
    """The installed distribution's version, else the package's own."""
    from importlib import metadata

    try:
        return metadata.version("ftflow")
    except metadata.PackageNotFoundError:
        import ftflow

        return ftflow.__version__


def token_from_env() -> str:
    """The Hub token from ``HF_TOKEN``; raises :class:`PublishError` without one."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise PublishError(
            f"{TOKEN_ENV} is not set: publishing needs a Hugging Face token with write access "
            f"to the organisation, in the environment variable {TOKEN_ENV} (never in the config "
            "or on a command line); nothing was sent to the Hub"
        )
    return token


# ------------------------------------------------------------------------- what goes up


def upload_files(final: Path) -> dict[str, Path]:
    """``{path in repo: local file}``: every non-hidden file of ``final/`` but its README."""
    out = {}
    for path in sorted(Path(final).rglob("*")):
        rel = path.relative_to(final)
        if not path.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.as_posix() == CARD_NAME:  # the model card takes its place
            continue
        out[rel.as_posix()] = path
    if not out:
        raise PublishError(f"{final}: no file to publish (is the run finished?)")
    return out


@dataclass(frozen=True)
class DataRecord:
    """One dataset a published model was trained on, as the bytes the trainer read."""

    name: str
    run: str  # the run that trained on it (the published run, or its parent)
    path: str
    sha256: str
    size: int
    records: int
    source: Mapping


def data_record(name: str, run: str, path: Path, source: Mapping) -> DataRecord:
    data = Path(path).read_bytes()
    records = sum(1 for line in data.split(b"\n") if line.strip())
    return DataRecord(
        name, run, str(path), files.sha256_bytes(data), len(data), records, dict(source)
    )


@dataclass(frozen=True)
class EvalRow:
    """One number of an evaluation, with its interval."""

    evaluation: str
    item: str  # a question id, "overall", or an lm-eval task
    metric: str
    value: float
    low: float | None
    high: float | None
    n: str
    interval: str  # how the interval was computed


def _number(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def eval_rows(path: Path) -> list[EvalRow]:
    """The rows of one evaluation output: ``summary.csv`` or ``lm_eval.json``."""
    path = Path(path)
    evaluation = path.parent.name
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            return [
                EvalRow(
                    evaluation,
                    "overall" if row["question_id"] == "__overall__" else row["question_id"],
                    "misaligned share",
                    _number(row["misaligned_share"]),
                    _number(row["ci_low"]),
                    _number(row["ci_high"]),
                    f"{row['n_coherent']} coherent of {row['n_answers']}",
                    "bootstrap 95 %",
                )
                for row in csv.DictReader(handle)
            ]
    data = json.loads(path.read_text())
    rows = []
    for task, info in sorted(data["results"].items()):
        metrics = info["metrics"]
        for name, value in metrics.items():
            if name.endswith("_stderr") or isinstance(value, dict | list | str):
                continue
            stderr = _number(metrics.get(f"{name}_stderr"))
            value = _number(value)
            low, high = (value - Z95 * stderr, value + Z95 * stderr)
            rows.append(
                EvalRow(
                    evaluation,
                    task,
                    name,
                    value,
                    None if math.isnan(stderr) else low,
                    None if math.isnan(stderr) else high,
                    str(info.get("n_samples", "")),
                    "± 1.96 stderr" if not math.isnan(stderr) else "no stderr",
                )
            )
    return rows


# ------------------------------------------------------------------------- the card


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4g}"


def _source(source: Mapping) -> str:
    if "hub" in source:
        return f"Hub `{source['hub']}` at `{source.get('revision', '?')}`"
    if "url" in source:
        pin = f" (sha256 pinned `{source['sha256']}`)" if source.get("sha256") else ""
        return f"`{source['url']}`{pin}"
    if "path" in source:
        return f"local file `{source['path']}`"
    if "tiny" in source:
        return "a tiny random-init model built by ftflow"
    return json.dumps(dict(source), sort_keys=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def card_metadata(run_spec: spec.RunSpec, *, adapter: bool, data: Sequence[DataRecord]) -> dict:
    """The model card's YAML front matter."""
    meta: dict = {}
    source = run_spec.model.source
    if "hub" in source:
        meta["base_model"] = source["hub"]
    hub_data = sorted({d.source["hub"] for d in data if "hub" in d.source})
    if hub_data:
        meta["datasets"] = hub_data
    meta["library_name"] = "peft" if adapter else "transformers"
    backend = BACKEND_TAGS.get(run_spec.model.backend, run_spec.model.backend)
    meta["tags"] = list(dict.fromkeys(["ftflow", run_spec.method.kind, backend]))
    return meta


def model_card(
    *,
    repo_id: str,
    run_spec: spec.RunSpec,
    run_yaml: str,
    adapter: bool,
    data: Sequence[DataRecord],
    evaluations: Sequence[EvalRow],
    uploaded: Mapping[str, tuple[str, int]],
    version: str,
) -> str:
    """The README.md of a published run (pure: the same inputs give the same text).

    ``uploaded`` maps each file of the repo but the card to its (sha256, size).
    """
    run = run_spec.run
    meta = card_metadata(run_spec, adapter=adapter, data=data)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    kind = "a PEFT adapter over the base model" if adapter else "the full fine-tuned model"
    parent = f", continuing from run `{run_spec.parent}`" if run_spec.parent else ""
    out = [
        f"---\n{front}---",
        f"# {repo_id}",
        f"Run `{run}` of an ftflow workflow (ftflow {version}): "
        f"method `{run.method}` (kind {run_spec.method.kind}) on dataset `{run.dataset}`, "
        f"seed {run.seed}, backend `{run_spec.model.backend}`{parent}. "
        f"This repo holds {kind}.",
        "## Base model",
        f"Model `{run.model}`: {_source(run_spec.model.source)}.",
        "## Evaluation",
    ]
    if evaluations:
        out.append(
            _table(
                ["evaluation", "item", "metric", "value", "interval", "how", "n"],
                [
                    [
                        e.evaluation,
                        e.item,
                        e.metric,
                        _fmt(e.value),
                        f"[{_fmt(e.low)}, {_fmt(e.high)}]" if e.low is not None else "n/a",
                        e.interval,
                        e.n,
                    ]
                    for e in evaluations
                ],
            )
        )
    else:
        out.append("No evaluation is configured for this run.")
    out += [
        "## Data",
        "The raw data each training read (after prefetch and export, before sampling and "
        "tokenisation), by sha256:",
        _table(
            ["dataset", "trained in run", "sha256", "bytes", "records", "source"],
            [
                [f"`{d.name}`", f"`{d.run}`", f"`{d.sha256}`", d.size, d.records, _source(d.source)]
                for d in data
            ],
        ),
        "## Resolved config",
        "The run's `run.yaml`, rendered by ftflow from the workflow config (every default "
        "filled in):",
        f"```yaml\n{run_yaml.rstrip()}\n```",
        "## Files",
        _table(
            ["file", "bytes", "sha256"],
            [[f"`{p}`", size, f"`{sha}`"] for p, (sha, size) in sorted(uploaded.items())],
        ),
        "## Provenance",
        f"- ftflow version: {version}\n- run: `{run}`\n- repo: `{repo_id}`",
    ]
    return "\n\n".join(out) + "\n"


# ------------------------------------------------------------------------- the push


def _no_token_in(token: str, texts: Mapping[str, str]) -> None:
    for what, text in texts.items():
        if token in text:
            raise PublishError(f"{what} contains the value of {TOKEN_ENV}; nothing was sent")


def push(
    repo_id: str,
    uploads: Mapping[str, Path],
    card: str,
    *,
    private: bool,
    token: str,
    message: str,
) -> dict:
    """Create the repo (if new) and commit ``uploads`` + the card as its whole content."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        raise PublishError(
            "HF_HUB_OFFLINE is set: publishing needs the network — run it on the login node "
            "without HF_HUB_OFFLINE"
        )
    api = HfApi(token=token, library_name="ftflow", library_version=ftflow_version())
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        remote = api.list_repo_files(repo_id, repo_type="model")
        stale = sorted(set(remote) - set(uploads) - {CARD_NAME} - KEPT_REMOTE)
        operations = [CommitOperationDelete(path) for path in stale]
        operations += [
            CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(path))
            for rel, path in sorted(uploads.items())
        ]
        operations.append(CommitOperationAdd(CARD_NAME, card.encode("utf-8")))
        commit = api.create_commit(repo_id, operations, commit_message=message, repo_type="model")
        # an existing repo keeps its visibility: record what the Hub says, not what was asked
        is_private = api.model_info(repo_id, revision=commit.oid).private
    except HfHubHTTPError as error:
        raise PublishError(f"the Hub refused publishing to {repo_id}: {error}") from None
    print(f"committed {commit.oid} to {repo_id}: {commit.commit_url}", file=sys.stderr)
    return {
        "repo_url": str(url),
        "private": is_private,
        "commit": commit.oid,
        "commit_url": commit.commit_url,
        "deleted": stale,
    }


def main(
    *,
    final: Path,
    run_config: Path,
    model_dir: Path,
    evaluations: Sequence[Path],
    datasets: Sequence[Mapping],
    repo_id: str,
    private: bool,
    out: Path,
) -> dict:
    """Publish one run; write and return its record (``published.json``).

    ``datasets``: ``{"name", "run", "path", "source"}`` for the run's dataset and those of its
    parent runs. Everything is read and the card built before the first request.
    """
    token = token_from_env()
    final, run_config = Path(final), Path(run_config)
    run_spec = spec.load(run_config)
    run = paths.parse_run(run_config)
    adapter = final_lib.read(model_dir, final).is_adapter
    uploads = upload_files(final)
    uploaded = {rel: (files.sha256_file(p), p.stat().st_size) for rel, p in uploads.items()}
    data = [data_record(d["name"], d["run"], Path(d["path"]), d["source"]) for d in datasets]
    rows = [row for path in evaluations for row in eval_rows(Path(path))]
    version = ftflow_version()
    card = model_card(
        repo_id=repo_id,
        run_spec=run_spec,
        run_yaml=run_config.read_text(),
        adapter=adapter,
        data=data,
        evaluations=rows,
        uploaded=uploaded,
        version=version,
    )
    _no_token_in(token, {"the model card": card})
    size = sum(s for _sha, s in uploaded.values())
    print(
        f"publishing {run} to {repo_id} ({'private' if private else 'public'}): "
        f"{len(uploads)} files, {size} bytes, and the model card",
        file=sys.stderr,
    )
    pushed = push(
        repo_id,
        uploads,
        card,
        private=private,
        token=token,
        message=f"ftflow {version}: run {run}",
    )
    card_bytes = card.encode("utf-8")
    record = {
        "run": str(run),
        "repo_id": repo_id,
        **pushed,
        "files": {
            **{rel: {"sha256": sha, "size": size} for rel, (sha, size) in uploaded.items()},
            CARD_NAME: {"sha256": files.sha256_bytes(card_bytes), "size": len(card_bytes)},
        },
        "ftflow_version": version,
    }
    _no_token_in(token, {"the record": json.dumps(record)})
    files.write_json(out, record)
    return record
