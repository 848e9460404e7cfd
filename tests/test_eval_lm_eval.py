"""lm-evaluation-harness on a run's final model, offline, on the project's own local task.

The evaluations run in a subprocess, from a scratch working directory, with the offline
variables set by ``--resources`` before anything is imported and every socket connection / DNS
lookup refused and logged (a ``sitecustomize`` on ``PYTHONPATH``): the run must not even try
the network.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from ftflow import tiny
from ftflow.evaluation.lm_eval_runner import TASKS_DIR, model_args, resolve_data_paths

REPO = Path(__file__).resolve().parents[1]
TASK = "ftflow_secure_code"
TASK_DIR = REPO / TASKS_DIR / TASK
TASK_SIZE = sum(1 for line in (TASK_DIR / f"{TASK}.jsonl").open() if line.strip())

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason='lm_eval is not installed (pip install "lm-eval==0.4.13")',
)

RUNS = itertools.count()

NO_NETWORK = textwrap.dedent(
    """
    import os, socket

    _LOG = os.environ["FTFLOW_NETWORK_LOG"]
    _connect, _connect_ex, _getaddrinfo = (
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
    )

    def _refuse(what):
        with open(_LOG, "a") as handle:
            handle.write(what + "\\n")
        raise OSError("network disabled in this test: " + what)

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(f"connect {address!r}")
        return _connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _refuse(f"connect_ex {address!r}")
        return _connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        _refuse(f"getaddrinfo {host!r}")

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
    """
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch working directory (not the repository) with a tiny base model in it."""
    work = tmp_path_factory.mktemp("lm_eval")
    tiny.build(work / "resources/models/tiny", sorted((REPO / "data/chat").glob("*.jsonl")))
    guard = work / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_NETWORK)
    return work


def clean_env(workdir: Path, **extra: str) -> dict[str, str]:
    """The test's environment without Hugging Face settings, HOME in ``workdir``, + ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(
        HOME=str(workdir / "home"),  # nothing may be written to the user's caches either
        XDG_CACHE_HOME=str(workdir / "home/.cache"),
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
        **extra,
    )
    return env


def run_offline(
    workdir: Path, *args: str, task: str = TASK, include: Path = REPO / TASKS_DIR
) -> Path:
    """``python -m ftflow.evaluation.lm_eval_runner`` on ``task``, offline, no network."""
    out = workdir / "eval" / f"lm_eval_{next(RUNS)}.json"
    log = workdir / "network.log"
    log.unlink(missing_ok=True)
    env = clean_env(workdir, FTFLOW_NETWORK_LOG=str(log))
    env["PYTHONPATH"] = os.pathsep.join([str(workdir / "guard"), env["PYTHONPATH"]])
    cmd = [
        sys.executable, "-m", "ftflow.evaluation.lm_eval_runner",
        "--resources", "resources",
        "--model-dir", "resources/models/tiny",
        "--tasks", task,
        "--include-path", str(include),  # absolute; the task's data file path is relative
        "--out", str(out.relative_to(workdir)),
        "--batch-size", "4",
        *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert not log.exists(), f"tried the network:\n{log.read_text()}"
    assert not (workdir / "home").exists(), "wrote outside the working directory"
    assert (workdir / "resources/hf_home/datasets").is_dir(), "datasets cache not in resources/"
    text = out.read_text()
    assert str(workdir) not in text and str(REPO) not in text, "absolute path in the results"
    return out


def check_results(data: dict) -> dict:
    assert data["kind"] == "lm_eval"
    assert data["lm_eval_version"]
    assert data["tasks"] == [TASK]
    task = data["results"][TASK]
    assert 0.0 <= task["metrics"]["acc"] <= 1.0
    assert 0.0 <= task["metrics"]["acc_norm"] <= 1.0
    assert task["n_samples"] == task["n_samples_total"] == TASK_SIZE
    assert task["num_fewshot"] == 0
    return task


# --------------------------------------------------------------------------- offline runs


@pytest.fixture(scope="module")
def base_results(workdir) -> dict:
    return json.loads(run_offline(workdir, "--seed", "3").read_text())


@needs_lm_eval
def test_base_model_offline(base_results):
    data = base_results
    check_results(data)
    assert data["model"] == {
        "base": "resources/models/tiny",
        "final": None,
        "adapter": False,
        "num_parameters": data["model"]["num_parameters"],
        "dtype": "torch.float32",
    }
    assert data["settings"]["seed"] == 3 and data["settings"]["device"] == "cpu"
    assert data["settings"]["batch_size"] == 4 and data["settings"]["limit"] is None


@needs_lm_eval
def test_lora_adapter_loads_as_base_plus_adapter(workdir, base_results):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaForCausalLM

    base_dir = workdir / "resources/models/tiny"
    final = workdir / "results/tiny/lora/chat/seed0/final"
    torch.manual_seed(0)
    # init_lora_weights=False: random B, so the adapter really changes the model
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    model = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir), lora)
    model.save_pretrained(final)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(final)
    config = json.loads((final / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tiny"  # a model name, as ftflow writes it: not a path
    (final / "adapter_config.json").write_text(json.dumps(config))
    lora_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)

    base = base_results
    data = json.loads(run_offline(workdir, "--final", str(final.relative_to(workdir))).read_text())
    check_results(data)
    assert data["model"]["base"] == "resources/models/tiny"
    assert data["model"]["final"] == "results/tiny/lora/chat/seed0/final"
    assert data["model"]["adapter"] is True
    assert data["model"]["num_parameters"] == base["model"]["num_parameters"] + lora_params


@needs_lm_eval
def test_hub_task_prefetched_then_offline(workdir):
    """A task whose data is a hub dataset: loaded once online (the login node, here a fake hub
    on 127.0.0.1) into resources/, then evaluated offline; also ``--limit``."""
    from fakehub import FakeHub

    dataset = workdir / "hub_dataset"
    (dataset / "data").mkdir(parents=True)
    (dataset / "data/test.jsonl").write_bytes((TASK_DIR / f"{TASK}.jsonl").read_bytes())
    config = yaml.safe_load((TASK_DIR / f"{TASK}.yaml").read_text())
    config.pop("dataset_kwargs")
    config.update(task="hub_secure_code", dataset_path="org/secure_code")
    tasks = workdir / "hub_tasks"
    (tasks / "hub_secure_code").mkdir(parents=True)
    (tasks / "hub_secure_code/hub_secure_code.yaml").write_text(yaml.safe_dump(config))

    with FakeHub({"datasets/org/secure_code": dataset}) as hub:
        cmd = [
            sys.executable, "-m", "ftflow.evaluation.lm_eval_runner", "--prefetch",
            "--resources", "resources", "--tasks", "hub_secure_code", "--include-path", str(tasks),
        ]  # fmt: skip
        env = clean_env(workdir, **hub.env())
        proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
        assert hub.requests_to("data/test.jsonl"), "the dataset was not downloaded"
        seen = len(hub.requests)
        out = run_offline(workdir, "--limit", "4", task="hub_secure_code", include=tasks)
        assert len(hub.requests) == seen
    data = json.loads(out.read_text())
    task = data["results"]["hub_secure_code"]
    assert 0.0 <= task["metrics"]["acc"] <= 1.0
    assert task["n_samples"] == 4 and task["n_samples_total"] == TASK_SIZE
    assert data["settings"]["limit"] == 4


@needs_lm_eval
def test_refuses_to_run_online(tmp_path):
    code = (
        "from pathlib import Path\n"
        "from ftflow.evaluation.lm_eval_runner import run_lm_eval\n"
        f"run_lm_eval(Path('.'), None, ['{TASK}'], None, Path('out.json'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "HF_HUB_OFFLINE" in proc.stderr and "apply_offline" in proc.stderr
    assert not (tmp_path / "out.json").exists()


# --------------------------------------------------------------------------- pieces


def test_task_file():
    config = yaml.safe_load((TASK_DIR / f"{TASK}.yaml").read_text())
    assert config["task"] == TASK and config["dataset_path"] == "json"
    assert config["output_type"] == "multiple_choice"
    records = [json.loads(line) for line in (TASK_DIR / f"{TASK}.jsonl").open()]
    assert len(records) == TASK_SIZE == 10
    for record in records:
        assert len(record["choices"]) == 2 and record["label"] in (0, 1)
    assert {r["label"] for r in records} == {0, 1}  # the secure answer is not always first


def test_resolve_data_paths(tmp_path):
    config = {
        "task": "t",
        "dataset_kwargs": {
            "data_files": {
                "test": "a.jsonl",
                "train": ["b.jsonl", "/abs/c.jsonl", "hf://datasets/x/y/d.jsonl"],
            },
            "data_dir": "sub",
        },
    }
    resolved = resolve_data_paths(config, tmp_path)
    files = resolved["dataset_kwargs"]["data_files"]
    assert files["test"] == str(tmp_path / "a.jsonl")
    assert files["train"] == [
        str(tmp_path / "b.jsonl"),
        "/abs/c.jsonl",
        "hf://datasets/x/y/d.jsonl",
    ]
    assert resolved["dataset_kwargs"]["data_dir"] == str(tmp_path / "sub")
    assert config["dataset_kwargs"]["data_files"]["test"] == "a.jsonl"  # input untouched
    single = resolve_data_paths({"dataset_kwargs": {"data_files": "x.json"}}, tmp_path)
    assert single["dataset_kwargs"]["data_files"] == str(tmp_path / "x.json")
    assert resolve_data_paths({"task": "t"}, tmp_path) == {"task": "t"}


def test_model_args(tmp_path):
    base, final = tmp_path / "base", tmp_path / "final"
    base.mkdir()
    (base / "config.json").write_text("{}")  # a model folder, as final.read requires
    final.mkdir()
    assert model_args(base, None) == {"pretrained": str(base)}
    (final / "config.json").write_text("{}")
    assert model_args(base, final) == {"pretrained": str(final)}
    (final / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny"}')
    assert model_args(base, final) == {
        "pretrained": str(base), "peft": str(final), "tokenizer": str(base)
    }  # fmt: skip
    (final / "tokenizer_config.json").write_text("{}")
    assert model_args(base, final)["tokenizer"] == str(final)
    # the model's config reaches lm-eval (models.<name>.dtype, trust_remote_code)
    args = model_args(base, final, "bfloat16", trust_remote_code=True)
    assert args["dtype"] == "bfloat16" and args["trust_remote_code"] is True
