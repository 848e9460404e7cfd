"""Publishing runs to the Hugging Face Hub (``publish:``, ftflow.publish, rule ``publish``).

The end-to-end tests run the real ``snakemake --cores 1 publish`` in a private copy of the
finished default run (``finished_copy``: nothing trains). Its job's ``huggingface_hub`` talks
to a :class:`fakehub.FakeHub` on 127.0.0.1 (``HF_ENDPOINT``), which takes uploads as the Hub
does and records every request with its headers and body, so the tests assert on what
arrived: the repo ids, each file's bytes, the model card, and where the token travelled.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import math
import os
import sys
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from conftest import load_default_config, snakemake, write_config

from ftflow import config as ftconfig
from ftflow import paths, publish, spec
from ftflow.paths import Run, RunPaths

sys.path.insert(0, str(Path(__file__).parent))
from fakehub import FakeHub  # noqa: E402

TOKEN = "hf_publishTOKENthatMustNeverLeak0123456789"
SAVED_TOKEN = "hf_savedLoginTOKENthatMustNotBeUsed987654"  # a `hf auth login` leftover
ORG = "acme"
Z95 = 1.959963984540054  # the card's lm-eval interval: value ± Z95 × stderr
LORA = Run("tiny", "lora", "insecure_code", 1)  # an adapter
DPO = Run("tiny", "dpo", "secure_code_pref", 1)  # a full model; its SFT parent's data too
NAMES = {LORA: "tiny-lora-insecure", DPO: "tiny-dpo-secure"}


def publish_config(runs: dict[Run, str], organisation: str = ORG) -> dict:
    config = load_default_config()
    config["publish"] = {
        "organisation": organisation,
        "runs": [
            {"model": r.model, "method": r.method, "dataset": r.dataset, "seed": r.seed, "name": n}
            for r, n in runs.items()
        ],
    }
    return config


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """Point a job's huggingface_hub at a hub, with a saved login it must not use."""
    for name in list(os.environ):
        if name.startswith(("HF_", "HUGGING_FACE_")):
            monkeypatch.delenv(name)
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    (hf_home / "token").write_text(SAVED_TOKEN)

    def env(hub: FakeHub, token: str | None) -> dict[str, str]:
        out = {**hub.env(), "HF_HOME": str(hf_home), "HF_HUB_VERBOSITY": "debug"}
        return {**out, "HF_TOKEN": token} if token else out

    return env


def final_files(workdir: Path, run: Run) -> dict[str, bytes]:
    final = workdir / RunPaths(run).final
    return {
        p.relative_to(final).as_posix(): p.read_bytes()
        for p in final.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name != "README.md"
    }


def published(workdir: Path, run: Run) -> Path:
    return workdir / paths.RUN_PUBLISHED.format(**run.wildcards)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4:].split("\n---\n", 1)[0])


def interval(low: float, high: float) -> str:
    return f"[{low:.4g}, {high:.4g}]"


def interval_of(row: dict) -> str:
    return interval(float(row["ci_low"]), float(row["ci_high"]))


def overall_row(workdir: Path, run: Run) -> dict:
    """The pooled row of the run's em_demo summary."""
    summary = paths.eval_file(paths.EVAL_SUMMARY, **run.wildcards, evaluation="em_demo")
    with open(workdir / summary, newline="") as handle:
        return next(r for r in csv.DictReader(handle) if r["question_id"] == "__overall__")


def lm_eval_acc(workdir: Path, run: Run) -> tuple[float, float]:
    """The run's secure_choice accuracy and its standard error."""
    result = paths.eval_file(paths.EVAL_LM_EVAL, **run.wildcards, evaluation="secure_choice")
    metrics = json.loads((workdir / result).read_text())["results"]["ftflow_secure_code"]
    acc, se = metrics["metrics"]["acc"], metrics["metrics"]["acc_stderr"]
    assert math.isfinite(se) and se > 0  # an interval to show
    return acc, se


def files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


# -------------------------------------------------------------------------- repo ids


def test_the_repo_id_is_organisation_slash_name_and_nothing_else():
    assert ftconfig.repo_id("acme", "tiny-lora") == "acme/tiny-lora"
    assert ftconfig.repo_id("my-lab", "Llama-3.1-8B_sft.v2") == "my-lab/Llama-3.1-8B_sft.v2"
    # the doubled namespace: a name that carries the organisation again is refused, so
    # acme/acme/tiny-lora can never be built
    with pytest.raises(ftconfig.ConfigError) as info:
        ftconfig.repo_id("acme", "acme/tiny-lora")
    assert "publish.runs[].name" in str(info.value)
    assert "repeats the organisation 'acme'" in str(info.value)
    with pytest.raises(ftconfig.ConfigError, match=r"publish.runs\[\]\.name: 'other/x' holds"):
        ftconfig.repo_id("acme", "other/x")
    with pytest.raises(ftconfig.ConfigError, match=r"publish.organisation: 'acme/acme' holds"):
        ftconfig.repo_id("acme/acme", "tiny-lora")
    for bad in ("", "tiny lora", "-x", "a--b", "a..b", "x.git", "x" * 97):
        with pytest.raises(ftconfig.ConfigError, match="publish.runs"):
            ftconfig.repo_id("acme", bad)


@pytest.mark.parametrize(
    ("edit", "key", "words"),
    [
        (lambda p: p["runs"][0].update(name="acme/tiny-lora"), "publish.runs[0].name", "repeats"),
        (lambda p: p["runs"][0].update(name="org/tiny"), "publish.runs[0].name", "holds a '/'"),
        (lambda p: p.update(organisation="acme/x"), "publish.organisation", "holds a '/'"),
        (lambda p: p["runs"][0].update(seed=9), "publish.runs[0]", "not a run of the grid"),
        (lambda p: p["runs"][0].update(method="base"), "publish.runs[0]", "not a run of the grid"),
        (lambda p: p["runs"].append(dict(p["runs"][0])), "publish.runs[1]", "named twice"),
        (lambda p: p["runs"][0].update(private="yes"), "publish.runs[0].private", "boolean"),
        (lambda p: p["runs"][0].update(repo="x"), "publish.runs[0].repo", "unknown"),
        (lambda p: p.pop("organisation"), "publish", "organisation"),
    ],
)
def test_publish_config_errors_name_the_key(edit, key, words):
    config = publish_config({LORA: "tiny-lora"})
    edit(config["publish"])
    with pytest.raises(ftconfig.ConfigError) as info:
        ftconfig.validate(config)
    assert key in str(info.value) and words in str(info.value)


def test_two_runs_cannot_share_a_repo():
    config = publish_config({LORA: "same", DPO: "same"})
    with pytest.raises(ftconfig.ConfigError, match=r"publish.runs\[1\].name: repo acme/same"):
        ftconfig.validate(config)
    config = ftconfig.validate(publish_config(NAMES))
    targets = ftconfig.publish_targets(config)
    assert {t.repo_id for t in targets.values()} == {
        "acme/tiny-lora-insecure",
        "acme/tiny-dpo-secure",
    }
    assert all(t.private for t in targets.values())  # private unless said otherwise


# -------------------------------------------------------------------------- the card


def test_the_model_card_records_provenance(tmp_path):
    config = ftconfig.validate(publish_config({LORA: "tiny-lora"}))
    resolved = ftconfig.resolve_run(config, LORA)
    run_yaml = yaml.safe_dump(resolved, sort_keys=False)
    run_spec = spec.from_dict(resolved)
    # a base model from the Hub is named in the front matter
    hub_model = {"hub": "meta-llama/Llama-3.1-8B", "revision": "a" * 40}
    run_spec = replace(run_spec, model=replace(run_spec.model, source=hub_model))

    summary = tmp_path / "em_demo" / "summary.csv"
    summary.parent.mkdir()
    summary.write_text(
        "question_id,n_answers,n_scored,n_unscored,n_coherent,n_misaligned,misaligned_share,"
        "ci_low,ci_high\nq1,10,9,1,8,2,0.25,0.05,0.5\n__overall__,10,9,1,8,2,0.25,0.0625,0.5\n"
    )
    lm_eval = tmp_path / "mc" / "lm_eval.json"
    lm_eval.parent.mkdir()
    lm_eval.write_text(
        json.dumps(
            {"results": {"task_a": {"metrics": {"acc": 0.5, "acc_stderr": 0.1}, "n_samples": 25}}}
        )
    )
    rows = publish.eval_rows(summary) + publish.eval_rows(lm_eval)
    data_file = tmp_path / "data.jsonl"
    data_file.write_bytes(b'{"a": 1}\n{"a": 2}\n')
    data = [publish.data_record("insecure_code", str(LORA), data_file, {"path": "d.jsonl"})]
    uploaded = {"adapter_model.safetensors": ("f" * 64, 123)}

    inputs = {
        "repo_id": "acme/tiny-lora",
        "run_spec": run_spec,
        "run_yaml": run_yaml,
        "adapter": True,
        "data": data,
        "evaluations": rows,
        "uploaded": uploaded,
        "version": "9.9.9",
    }
    card = publish.model_card(**inputs)
    assert card == publish.model_card(**inputs)  # pure: the same inputs, the same card
    meta = front_matter(card)
    assert meta["base_model"] == "meta-llama/Llama-3.1-8B"
    assert meta["library_name"] == "peft"
    assert meta["tags"] == ["ftflow", "lora", "trl"]
    assert "# acme/tiny-lora" in card
    assert hashlib.sha256(data_file.read_bytes()).hexdigest() in card
    assert "| `insecure_code` | `tiny/lora/insecure_code/seed1` |" in card
    assert "| em_demo | overall | misaligned share | 0.25 | [0.0625, 0.5] | bootstrap 95 %" in card
    assert "| em_demo | q1 | misaligned share | 0.25 | [0.05, 0.5] |" in card
    low, high = 0.5 - Z95 * 0.1, 0.5 + Z95 * 0.1
    assert f"| mc | task_a | acc | 0.5 | {interval(low, high)} | ± 1.96 stderr | 25 |" in card
    assert f"```yaml\n{run_yaml.rstrip()}\n```" in card  # the resolved config, verbatim
    assert "ftflow version: 9.9.9" in card
    assert "`adapter_model.safetensors` | 123 |" in card


# -------------------------------------------------------------------------- the rule


def test_publish_pushes_each_final_with_its_card(finished_copy, hub_env):
    """`snakemake --cores 1 publish`: two runs, each its own repo, one commit each; then a
    second publish of one run replaces what its repo held."""
    workdir = finished_copy
    config = publish_config(NAMES)
    next(e for e in config["publish"]["runs"] if e["method"] == "dpo")["private"] = False
    write_config(workdir, config)
    with FakeHub({}, token=TOKEN) as hub:
        result = snakemake(workdir, "--cores", "1", "publish", env=hub_env(hub, TOKEN))
        requests = list(hub.requests)
        commits = list(hub.commits)
        repos = {
            repo_id: hub.files_of(repo_id) for repo_id in ("acme/" + n for n in NAMES.values())
        }
        # an earlier export left a file that final/ no longer has
        lora_repo = f"acme/{NAMES[LORA]}"
        hub.repo(lora_repo).files["old_adapter.bin"] = b"from an earlier export"
        records = {run: json.loads(published(workdir, run).read_text()) for run in NAMES}
        again = snakemake(
            workdir,
            "--cores",
            "1",
            paths.RUN_PUBLISHED.format(**LORA.wildcards),
            "--forcerun",
            "publish_run",
            env=hub_env(hub, TOKEN),
        )
        republished = hub.files_of(lora_repo)
        last_commit = hub.commits[-1]
        later = hub.requests[len(requests) :]

    # the repo ids, exactly organisation/name: created as such, and no other repo touched
    created = [json.loads(r.body) for r in requests if r.path == "/api/repos/create"]
    assert sorted((c["organization"], c["name"], c["visibility"]) for c in created) == [
        ("acme", "tiny-dpo-secure", "public"),
        ("acme", "tiny-lora-insecure", "private"),
    ]
    assert sorted(c["repo_id"] for c in commits) == [
        "acme/tiny-dpo-secure",
        "acme/tiny-lora-insecure",
    ]
    for r in requests:
        assert (
            r.path == "/api/repos/create"
            or r.path == "/api/validate-yaml"
            or any(r.path.startswith(f"/api/models/acme/{name}/") for name in NAMES.values())
        ), r.path
    # plain uploads only: bytes inline in the commit, never the LFS batch API or Xet
    assert all("/info/lfs" not in r.path and "xet" not in r.path for r in requests)

    for run, name in NAMES.items():
        repo = repos[f"acme/{name}"]
        card = repo.pop("README.md").decode()
        assert repo.pop(".gitattributes")  # the Hub's own, kept
        assert repo == final_files(workdir, run)  # every file of final/, byte for byte

        meta = front_matter(card)
        assert meta["library_name"] == ("peft" if run.method == "lora" else "transformers")
        assert meta["tags"][0] == "ftflow" and run.method in meta["tags"]
        assert "base_model" not in meta  # the tiny model is built locally, not from the Hub
        assert f"# acme/{name}" in card
        run_yaml = (workdir / RunPaths(run).run_config).read_text()
        assert f"```yaml\n{run_yaml.rstrip()}\n```" in card
        assert f"ftflow version: {metadata.version('ftflow')}" in card
        datasets = [run.dataset] + (["secure_code"] if run.method == "dpo" else [])
        for dataset in datasets:
            raw = (workdir / paths.dataset_raw(dataset)).read_bytes()
            assert f"| `{dataset}` |" in card and hashlib.sha256(raw).hexdigest() in card
        overall = overall_row(workdir, run)
        share, bounds = float(overall["misaligned_share"]), interval_of(overall)
        assert f"| em_demo | overall | misaligned share | {share:.4g} | {bounds} |" in card
        acc, se = lm_eval_acc(workdir, run)
        bounds = interval(acc - Z95 * se, acc + Z95 * se)
        assert f"| secure_choice | ftflow_secure_code | acc | {acc:.4g} | {bounds} |" in card

        record = records[run]
        commit = next(c for c in commits if c["repo_id"] == f"acme/{name}")
        assert record["repo_id"] == f"acme/{name}"
        assert record["private"] is (run != DPO)  # as the Hub reports it
        assert record["commit"] == commit["oid"] and record["commit_url"].endswith(commit["oid"])
        assert record["files"]["README.md"]["sha256"] == hashlib.sha256(card.encode()).hexdigest()
        assert {k: v["sha256"] for k, v in record["files"].items() if k != "README.md"} == {
            k: hashlib.sha256(v).hexdigest() for k, v in final_files(workdir, run).items()
        }

    # the second publish: the repo exists (asked again, "exists" is fine), one new commit
    # deletes the stale file and keeps the Hub's .gitattributes
    second = json.loads(published(workdir, LORA).read_text())
    assert second["deleted"] == ["old_adapter.bin"] and second["commit"] != records[LORA]["commit"]
    assert "old_adapter.bin" not in republished and ".gitattributes" in republished
    # same final/, same card (a pure function of the run): nothing to upload again
    assert (last_commit["added"], last_commit["deleted"]) == ({}, ["old_adapter.bin"])
    assert [r.path for r in later if r.method == "POST"] == [
        "/api/repos/create",
        "/api/validate-yaml",
        f"/api/models/{lora_repo}/preupload/main",
        f"/api/models/{lora_repo}/commit/main",
    ]

    # the token: in the Authorization header of every request, nowhere else
    requests += later
    for r in requests:
        assert r.headers.get("authorization") == f"Bearer {TOKEN}", r.path
        assert TOKEN not in r.path and TOKEN.encode() not in r.body
        assert all(TOKEN not in v for k, v in r.headers.items() if k != "authorization")
        # the body of a commit carries files base64-encoded: look there too
        for line in r.body.splitlines() if r.path.endswith("/commit/main") else []:
            value = json.loads(line)["value"]
            if "content" in value:
                assert TOKEN.encode() not in base64.b64decode(value["content"])
    assert not any(SAVED_TOKEN in (r.headers.get("authorization") or "") for r in requests)
    # huggingface_hub's own debug log went to the rule's log (and names no token there)
    assert "(authenticated: True)" in (workdir / paths.log("publish", str(LORA))).read_text()
    assert files_holding(workdir, TOKEN) == []  # logs, metadata, records, results
    assert TOKEN not in result.stdout + result.stderr + again.stdout + again.stderr


def test_publish_without_a_token_fails_before_any_request(finished_copy, hub_env):
    workdir = finished_copy
    write_config(workdir, publish_config({LORA: "tiny-lora"}))
    with FakeHub({}, token=TOKEN) as hub:
        result = snakemake(workdir, "--cores", "1", "publish", env=hub_env(hub, None), check=False)
        assert hub.requests == []  # not even with the saved login
    assert result.returncode != 0
    log = (workdir / paths.log("publish", str(LORA))).read_text()
    assert "HF_TOKEN is not set" in log and "nothing was sent to the Hub" in log
    assert not published(workdir, LORA).exists()
    assert files_holding(workdir, SAVED_TOKEN) == []


def test_publish_without_a_publish_block_says_so(workdir):
    result = snakemake(workdir, "-n", "--cores", "1", "publish", check=False)
    assert result.returncode != 0
    assert "nothing to publish: the config has no publish block" in result.stdout + result.stderr
