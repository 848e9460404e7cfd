"""DPO reference log-probs: computed once, cached by content, reused, never held in training.

One SFT parent of the tiny model is trained through Snakemake (4 steps); DPO runs of it then
train in this process (``ftflow.train.main``, the job's own entry point) so that the test
can count what really ran: every call of TRL's ``compute_ref_log_probs`` (the reference
forward) and every model loaded by transformers, both passed through to the real code.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import copy_workflow, load_default_config, snakemake, write_config
from safetensors.torch import load_file, save_file

from ftflow import paths, train
from ftflow.backends.trl import ref_logps

pytestmark = pytest.mark.slow

SEED = 7
PREF = "secure_code_pref"
STEPS = 2
#: float32 sums of ~100 token log-probs (about -400): a batched forward with padding and a
#: one-record forward differ by rounding only, measured ≤ 1.2e-4 (relative ~3e-7).
LOGP_RTOL, LOGP_ATOL = 1e-5, 1e-3
#: The same DPO steps with the reference run on every batch instead of read from the
#: cache: the reference values may differ by rounding (other padding); the weights, after
#: two AdamW steps of lr 5e-4, were measured equal (difference 0.0) on a CPU.
WEIGHT_ATOL = 1e-5


def _config() -> dict:
    config = load_default_config()
    config.pop("evaluations")
    methods = config["methods"]
    methods["sft"]["max_steps"] = 4
    dpo = methods["dpo"]
    dpo.update(max_steps=STEPS, save_steps=1)
    methods["dpo_beta"] = {**json.loads(json.dumps(dpo)), "beta": 0.2}
    methods["dpo_live"] = {**json.loads(json.dumps(dpo)), "precompute_ref_log_probs": False}
    methods["dpo_ddp"] = json.loads(json.dumps(dpo))
    methods["dpo_ddp"].update(distributed="ddp")
    methods["dpo_ddp"]["resources"].update(cpu_processes=2, cpus_per_task=1)
    config["grid"] = [
        {"models": ["tiny"], "methods": ["sft"], "datasets": ["secure_code"], "seeds": [SEED]},
        {
            "models": ["tiny"],
            "methods": ["dpo", "dpo_beta", "dpo_live", "dpo_ddp"],
            "datasets": [PREF],
            "seeds": [SEED],
        },
    ]
    return config


def _run(method: str) -> paths.RunPaths:
    return paths.RunPaths.of("tiny", method, PREF, SEED)


PARENT = paths.RunPaths.of("tiny", "sft", "secure_code", SEED)


@dataclass
class Trained:
    log: str
    ref_forwards: int  # calls of TRL's reference forward (compute_ref_log_probs)
    models_loaded: int  # models transformers loaded (policy, reference)
    ref_model: object  # the trainer's reference model after construction


def _train(work: Path, method: str) -> Trained:
    """Train ``method`` in this process, as ``python -m ftflow.train run.yaml`` would."""
    from transformers import PreTrainedModel
    from trl import DPOTrainer

    from ftflow.backends.trl import trainer as trl_trainer

    counts = {"forward": 0, "loaded": 0}
    built = []
    real_forward = DPOTrainer.compute_ref_log_probs
    real_load = PreTrainedModel.from_pretrained.__func__
    real_build = trl_trainer.build_trainer

    def forward(self, *args, **kwargs):
        counts["forward"] += 1
        return real_forward(self, *args, **kwargs)

    def load(cls, *args, **kwargs):
        counts["loaded"] += 1
        return real_load(cls, *args, **kwargs)

    def build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        mp.setattr(DPOTrainer, "compute_ref_log_probs", forward)
        mp.setattr(PreTrainedModel, "from_pretrained", classmethod(load))
        mp.setattr(trl_trainer, "build_trainer", build)
        with contextlib.redirect_stdout(out):
            train.main(_run(method).run_config)
    return Trained(out.getvalue(), counts["forward"], counts["loaded"], built[0].ref_model)


def _entries(work: Path) -> list[Path]:
    root = work / Path(paths.REF_LOGPS_ENTRY).parent
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _values(entry: Path) -> dict[str, torch.Tensor]:
    import pyarrow.parquet as pq

    table = pq.read_table(entry / ref_logps.DATA_FILE)
    return {c: torch.tensor(table[c].to_pylist()) for c in ref_logps.COLUMNS}


def _weights(work: Path, method: str) -> dict[str, torch.Tensor]:
    return load_file(work / _run(method).final / "model.safetensors")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The SFT parent trained, the DPO runs configured, the preference data prepared."""
    work = copy_workflow(tmp_path_factory.mktemp("refcache") / "ftflow")
    write_config(work, _config())
    targets = [str(PARENT.final), str(paths.prepared("tiny", PREF))]
    targets += [str(_run(m).run_config) for m in ("dpo", "dpo_beta", "dpo_live", "dpo_ddp")]
    snakemake(work, *targets, "--cores", "2")
    return work


@pytest.fixture(scope="module")
def first(work: Path) -> Trained:
    """The first DPO run of this reference: nothing cached yet."""
    return _train(work, "dpo")


def test_the_first_run_computes_and_caches_without_a_second_model(work: Path, first: Trained):
    (entry,) = _entries(work)
    key = entry.name
    meta = json.loads((entry / ref_logps.META_FILE).read_text())
    assert f"[ftflow] reference log-probs: computed and cached {key} (48 records" in first.log
    assert "cache hit" not in first.log
    assert first.ref_forwards == 12  # 48 pairs in batches of 4, each forward once
    assert first.models_loaded == 1 and first.ref_model is None  # the policy only
    assert meta["key"] == entry.name and meta["n_records"] == 48
    assert (
        meta["inputs"]["data"]
        == json.loads((work / paths.prepared("tiny", PREF)).read_text())["key"]
    )
    assert set(meta["inputs"]["reference"]) == {"config.json", "model.safetensors"}
    assert meta["computed"]["processes"] == 1 and meta["computed"]["batch_size"] == 4
    staged = [p for p in entry.parent.iterdir() if p.is_dir() and p.name.startswith(f".{key}.")]
    assert staged == []  # no temporary folder left behind


def test_cached_values_equal_a_fresh_computation(work: Path, first: Trained):
    """The cache holds what the parent model computes, record by record: here with plain
    transformers, one unpadded record at a time, no TRL involved."""
    from transformers import AutoModelForCausalLM

    from ftflow.prepare import load_entry

    (entry,) = _entries(work)
    records, _ = load_entry(work / paths.prepared("tiny", PREF))
    model = AutoModelForCausalLM.from_pretrained(work / PARENT.final, dtype=torch.float32).eval()

    def logp(prompt: list[int], completion: list[int]) -> float:
        ids = torch.tensor([(prompt + completion)[:256]])  # the dataset's max_length
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        token_logps = torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None])[:, 0]
        return token_logps[len(prompt) - 1 :].sum().item()

    fresh = {
        "ref_chosen_logps": torch.tensor([logp(r["prompt_ids"], r["chosen_ids"]) for r in records]),
        "ref_rejected_logps": torch.tensor(
            [logp(r["prompt_ids"], r["rejected_ids"]) for r in records]
        ),
    }
    cached = _values(entry)
    for column in ref_logps.COLUMNS:
        diff = (cached[column] - fresh[column]).abs().max().item()
        print(f"{column}: max |cached - fresh| = {diff:.2e}")
        assert torch.allclose(cached[column], fresh[column], rtol=LOGP_RTOL, atol=LOGP_ATOL)
    assert (cached["ref_chosen_logps"] != cached["ref_rejected_logps"]).all()


def test_a_resumed_job_reads_the_cache_and_ends_identical(work: Path, first: Trained):
    """A killed attempt's checkpoints: the retry resumes, reads the cache (no reference
    forward, one model loaded), and its final weights equal the uninterrupted run's."""
    run = _run("dpo")
    uninterrupted = _weights(work, "dpo")
    entry_files = {p: p.stat().st_mtime_ns for p in _entries(work)[0].iterdir()}
    (work / run.checkpoints / ".finished").unlink()
    shutil.rmtree(work / run.checkpoints / f"checkpoint-{STEPS}")
    shutil.rmtree(work / run.final)

    retried = _train(work, "dpo")
    (entry,) = _entries(work)
    assert "resuming from checkpoint-1" in retried.log
    assert f"[ftflow] reference log-probs: cache hit {entry.name} (48 records)" in retried.log
    assert "computed and cached" not in retried.log
    assert retried.ref_forwards == 0
    assert retried.models_loaded == 1 and retried.ref_model is None
    assert {p: p.stat().st_mtime_ns for p in entry.iterdir()} == entry_files  # untouched
    resumed = _weights(work, "dpo")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_another_dpo_run_of_the_same_reference_reuses_it(work: Path, first: Trained):
    other = _train(work, "dpo_beta")  # beta acts on the values, not in them
    (entry,) = _entries(work)
    assert f"cache hit {entry.name} (48 records)" in other.log
    assert other.ref_forwards == 0 and other.models_loaded == 1


def test_without_precompute_the_reference_is_loaded_and_trains_the_same(work: Path, first: Trained):
    """``precompute_ref_log_probs: false`` is honoured: TRL's live reference model, run on
    every batch; the weights agree with the cached run's to rounding."""
    live = _train(work, "dpo_live")
    assert "reference log-probs" not in live.log
    assert live.models_loaded == 2 and live.ref_model is not None
    assert len(_entries(work)) == 1
    cached, uncached = _weights(work, "dpo"), _weights(work, "dpo_live")
    diff = max((cached[k] - uncached[k]).abs().max().item() for k in cached)
    print(f"max |cached-run weights - live-reference weights| = {diff:.2e}")
    assert diff <= WEIGHT_ATOL
    parent = load_file(work / PARENT.final / "model.safetensors")
    assert any(not torch.equal(cached[k], parent[k]) for k in cached)  # DPO did train


def test_the_key_follows_the_reference_weights_and_the_settings(work: Path, first: Trained):
    (entry,) = _entries(work)
    meta = json.loads((entry / ref_logps.META_FILE).read_text())
    settings, data = meta["inputs"]["settings"], meta["inputs"]["data"]
    with contextlib.chdir(work):
        key, _ = ref_logps.cache_key(PARENT.final, data, settings)
        assert key == entry.name  # the same inputs: the same key
        assert ref_logps.cache_key(PARENT.final, data, {**settings, "dtype": "bfloat16"})[0] != key
        assert ref_logps.cache_key(PARENT.final, "another-data-key", settings)[0] != key
        # The digest of each weight file is remembered (path, size, inode, mtime) …
        assert len(list((Path(paths.REF_LOGPS_ENTRY).parent / ".digests").iterdir())) == 2
        # … and a changed weight is a new file identity, hence a new digest and key.
        changed = Path("changed_parent")
        shutil.copytree(PARENT.final, changed)
        weights = load_file(changed / "model.safetensors")
        name = next(iter(weights))
        weights[name] = weights[name] + 1e-3
        save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
        assert ref_logps.cache_key(changed, data, settings)[0] != key


def test_two_processes_compute_one_entry_equal_to_one_process(work: Path, first: Trained):
    """DDP on two CPU processes, nothing cached: each rank computes its half, rank 0 writes
    the entry (same key: the batching is not part of it), the values equal one process's."""
    (entry,) = _entries(work)
    single = _values(entry)
    shutil.rmtree(entry)
    snakemake(work, str(_run("dpo_ddp").final), "--cores", "2")
    log = (work / _run("dpo_ddp").log()).read_text()
    assert "rank 0 of 2" in log and "rank 1 of 2" in log
    assert log.count(f"computed and cached {entry.name} (48 records") == 1
    meta = json.loads((entry / ref_logps.META_FILE).read_text())
    assert meta["computed"]["processes"] == 2
    both = _values(entry)
    for column in ref_logps.COLUMNS:
        assert torch.allclose(both[column], single[column], rtol=LOGP_RTOL, atol=LOGP_ATOL)


def test_precompute_is_a_dpo_key_on_by_default():
    from ftflow import config as ftconfig

    config = ftconfig.validate(load_default_config())
    assert config["methods"]["dpo"]["precompute_ref_log_probs"] is True
    assert "precompute_ref_log_probs" not in config["methods"]["sft"]
    wrong = load_default_config()
    wrong["methods"]["sft"]["precompute_ref_log_probs"] = True
    with pytest.raises(ftconfig.ConfigError) as info:
        ftconfig.validate(wrong)
    assert "methods.sft.precompute_ref_log_probs: only a dpo method takes" in str(info.value)
