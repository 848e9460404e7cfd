"""Padding-free and packed SFT compute what padded SFT computes, and the kernels' refusals.

The records are the bundled chat data as ``prepare_dataset`` caches them (input_ids and
assistant-only labels), the model the default config's tiny Llama, the trainer TRL's
``SFTTrainer`` with the arguments ftflow renders for each ``packing`` value: its own
dataset preparation, BFD packing and padding-free collator, and the loss its fused LM
head computes. With every record in one micro-batch, the padded and the packed batch hold
the same tokens, so each token's loss and the gradients must agree (float32: per-token
loss within 1e-5, measured ≤ 1e-6; gradients within 1e-6 absolute, measured ≤ 2e-8).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts" / "bench"))
import bench_packing  # noqa: E402  (the benchmark's model, records and trainer)

from ftflow.backends.trl import packing_args  # noqa: E402

RECORDS = 8  # all in one micro-batch
LOSS_TOL = 1e-5
GRAD_TOL = 1e-6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, list[dict]]:
    model_dir = bench_packing.tiny_model(tmp_path_factory.mktemp("packing") / "tiny")
    return model_dir, bench_packing.records(model_dir)[:RECORDS]


def _one_step(tiny, packing: str, attn: str, tmp_path: Path, restart_positions: bool = True):
    """Per-record token losses, the loss, the gradients and the batch of one micro-batch."""
    model_dir, rows = tiny
    sft = bench_packing.trainer(model_dir, rows, packing, attn, RECORDS, tmp_path / packing)
    batches = list(sft.get_train_dataloader())
    assert len(batches) == 1
    batch = batches[0]
    positions = batch.get("position_ids")
    if not restart_positions:  # the control: one long sequence, no record boundaries
        batch = {k: batch[k] for k in ("input_ids", "labels")}
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None]
    model = sft.model.train()
    model.zero_grad()
    loss = sft.compute_loss(model, dict(batch))  # the trainer's own loss: fused LM head
    loss.backward()
    with torch.no_grad():
        out = model(**batch, fused_lm_head=True)  # its per-token log-probabilities
    ids, mask, nll = batch["input_ids"], out.label_mask, -out.log_probs.detach()
    per_record = {}
    if "attention_mask" in batch:  # padded: one record per row
        for i in range(ids.shape[0]):
            n = int(batch["attention_mask"][i].sum())
            per_record[tuple(ids[i, :n].tolist())] = nll[i, : n - 1][mask[i, : n - 1]]
    else:  # one row; a record starts where TRL's position ids restart
        bounds = [*(positions[0] == 0).nonzero().flatten().tolist(), ids.shape[1]]
        for a, b in zip(bounds, bounds[1:], strict=False):
            per_record[tuple(ids[0, a:b].tolist())] = nll[0, a : b - 1][mask[0, a : b - 1]]
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return per_record, loss.item(), grads, batch


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("packing", ["padding_free", "bfd"])
def test_packed_token_losses_and_gradients_match_padded(tiny, tmp_path, packing, attn):
    padded, padded_loss, padded_grads, padded_batch = _one_step(tiny, "none", attn, tmp_path)
    packed, packed_loss, packed_grads, packed_batch = _one_step(tiny, packing, attn, tmp_path)

    # The packed row holds exactly the records, with no pad token, and no position id
    # runs on across a record: TRL's padding-free collator restarts them per record.
    assert "attention_mask" not in packed_batch and packed_batch["input_ids"].shape[0] == 1
    real = int(padded_batch["attention_mask"].sum())
    assert packed_batch["input_ids"].shape[1] == real < padded_batch["input_ids"].numel()
    assert packed.keys() == padded.keys() and len(packed) == RECORDS

    # The assistant-only labels survive: the same tokens are trained, as the cache has them.
    _, rows = tiny
    trained = sum(sum(label != -100 for label in row["labels"][1:]) for row in rows)
    assert sum(len(v) for v in packed.values()) == trained

    for key, losses in padded.items():
        assert torch.allclose(packed[key], losses, rtol=0, atol=LOSS_TOL)
    assert packed_loss == pytest.approx(padded_loss, abs=LOSS_TOL)
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, rtol=0, atol=GRAD_TOL), name


def test_the_comparison_sees_attention_across_records(tiny, tmp_path):
    """The control: the same packed row without restarting position ids lets records
    attend to each other, and the token losses no longer match the padded ones."""
    padded, *_ = _one_step(tiny, "none", "sdpa", tmp_path)
    leaked, *_ = _one_step(tiny, "padding_free", "sdpa", tmp_path, restart_positions=False)
    first = next(iter(leaked))  # the first record sees nothing before it either way
    worst = max((leaked[k] - padded[k]).abs().max().item() for k in padded if k != first)
    assert worst > 100 * LOSS_TOL


def test_packing_removes_the_pad_positions_of_an_epoch(tiny, tmp_path):
    """What makes packing faster where attention works per record: every position the
    model computes is a real token (64 bundled records, batches of 8)."""
    model_dir, _ = tiny
    rows = bench_packing.records(model_dir)
    counted = {}
    for mode in bench_packing.MODES:
        sft = bench_packing.trainer(model_dir, rows, mode, "sdpa", 8, tmp_path / mode)
        counted[mode] = bench_packing.positions(sft)
    real = sum(len(r["input_ids"]) for r in rows)
    computed, seen, steps = counted["none"]
    assert seen == real < computed and steps == 8
    assert counted["padding_free"] == (real, real, 8)  # the same records per step
    assert counted["bfd"][:2] == (real, real) and counted["bfd"][2] < 8  # fuller rows


def test_render_maps_packing_and_liger_to_trl():
    assert packing_args("none") == {}
    assert packing_args("padding_free") == {
        "padding_free": True, "max_length": None, "include_num_input_tokens_seen": "all",
    }  # fmt: skip
    assert packing_args("bfd")["packing"] is True
    assert packing_args("bfd")["packing_strategy"] == "bfd"


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("block", "method", "change", "key", "words"),
    [
        (1, "dpo", {"packing": "padding_free"}, "methods.dpo.packing", "allowed for a dpo"),
        (0, "sft", {"liger_kernel": True}, "methods.sft.liger_kernel", "allowed on a CPU: false"),
        # the tiny Nemotron-H trains with the automodel backend
        (2, "sft", {"packing": "bfd"}, "methods.sft.packing", "force_hf"),
        (2, "sft", {"liger_kernel": True, "resources": {"gpus_per_node": 1}},
         "methods.sft.liger_kernel", "automodel backend does not apply them"),
    ],
)  # fmt: skip
def test_config_time_refusals_name_the_key(block, method, change, key, words):
    from conftest import load_default_config

    from ftflow import config as ftconfig

    config = load_default_config()
    config["grid"] = [config["grid"][block]]
    if method == "dpo":  # its parent SFT run
        config["grid"].insert(0, load_default_config()["grid"][0])
    config["methods"][method].update(change)
    with pytest.raises(ftconfig.ConfigError) as error:
        ftconfig.validate(config)
    assert key in str(error.value) and words in str(error.value)


def _spec(method_changes: dict, model: str = "tiny"):
    from ftflow import spec

    raw = {
        "run": {"model": model, "method": "sft", "dataset": "secure_code", "seed": 1},
        "model": {"backend": "trl", "dtype": "float32", "attn_implementation": "sdpa",
                  "trust_remote_code": False},
        "dataset": {"format": "chat", "max_length": 512},
        "method": {"kind": "sft", "learning_rate": 1e-4, "lr_scheduler": "linear",
                   "warmup_ratio": 0.0, "weight_decay": 0.0, "max_grad_norm": 1.0, "epochs": 1,
                   "optimizer": "adamw_torch", "gradient_checkpointing": False, "save_steps": 10,
                   "save_total_limit": 1, "logging_steps": 1, "distributed": "none",
                   **method_changes},
        "batch": {"global_batch_size": 8, "per_device_batch_size": 8,
                  "gradient_accumulation_steps": 1, "processes": 1},
    }  # fmt: skip
    return spec.from_dict(raw)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without a GPU")
def test_liger_without_a_gpu_is_refused_at_job_start(tiny):
    from transformers import AutoModelForCausalLM

    from ftflow.backends.trl.trainer import require_kernels
    from ftflow.config import ConfigError

    model = AutoModelForCausalLM.from_pretrained(tiny[0])
    require_kernels(_spec({"liger_kernel": False}), model)  # nothing asked, nothing refused
    with pytest.raises(ConfigError, match=r"methods\.sft\.liger_kernel: no CUDA GPU"):
        require_kernels(_spec({"liger_kernel": True}), model)


def test_packing_a_mamba_model_without_its_kernels_is_refused_at_job_start(tmp_path):
    """transformers' pure-torch Mamba path ignores the packed records' boundaries."""
    from transformers import AutoModelForCausalLM

    from ftflow import tiny as tinylib
    from ftflow.backends.trl.trainer import require_kernels
    from ftflow.config import ConfigError

    kernels_here = torch.cuda.is_available() and all(
        importlib.util.find_spec(p) for p in ("mamba_ssm", "causal_conv1d")
    )
    if kernels_here:
        pytest.skip("the Mamba kernels are present here")
    hybrid = tinylib.build(tmp_path / "hybrid", bench_packing.CORPUS, architecture="nemotron_h",
                           pattern="M*-E")  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(hybrid)
    require_kernels(_spec({"packing": "none"}, "tiny_hybrid"), model)
    with pytest.raises(ConfigError, match=r"methods\.sft\.packing: bfd .* Mamba layers"):
        require_kernels(_spec({"packing": "bfd"}, "tiny_hybrid"), model)


# ----------------------------------------------------------------------- GPU


def _gpu_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.gpu
def test_on_a_gpu_liger_kernels_keep_the_loss(tiny, tmp_path):
    """Liger's RMSNorm, RoPE and SwiGLU (as ftflow asks for them) change no loss beyond
    float32 rounding on the tiny model."""
    _gpu_or_skip()
    if importlib.util.find_spec("liger_kernel") is None:
        pytest.skip("liger-kernel is not installed")
    from transformers import AutoModelForCausalLM
    from transformers.integrations.liger import apply_liger_kernel

    from ftflow.backends.trl import LIGER_KERNELS

    model_dir, rows = tiny
    batch = bench_packing.trainer(model_dir, rows, "none", "sdpa", RECORDS, tmp_path / "b")
    inputs = {k: v.cuda() for k, v in next(iter(batch.get_train_dataloader())).items()}
    losses = []
    for liger in (False, True):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda()
        if liger:
            apply_liger_kernel(model, dict(LIGER_KERNELS))
        losses.append(float(model(**inputs).loss))
    assert losses[1] == pytest.approx(losses[0], abs=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
def test_on_a_gpu_flash_attention_packing_matches_padded(tiny, tmp_path):
    """flash_attention_2 takes the packed row's cu_seq_lens (varlen): bf16 tolerances."""
    _gpu_or_skip()
    from transformers import AutoModelForCausalLM

    model_dir, rows = tiny
    out = {}
    for mode in ("none", "padding_free"):
        sft = bench_packing.trainer(model_dir, rows, mode, "sdpa", RECORDS, tmp_path / mode)
        batch = {k: v.cuda() if hasattr(v, "cuda") else v
                 for k, v in next(iter(sft.get_train_dataloader())).items()}  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.bfloat16, attn_implementation="flash_attention_2"
        ).cuda()
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum"
        )
        out[mode] = float(nll) / int((labels[:, 1:] != -100).sum())
    assert out["padding_free"] == pytest.approx(out["none"], abs=2e-2)


# ------------------------------------------------------- the GPU benchmark's CPU path


def test_the_gpu_benchmark_runs_its_tiny_mode_on_a_cpu(tmp_path):
    """scripts/bench/bench_gpu.py --tiny: the same model building, trainers and table on a
    tiny model; on a CPU the Liger case is refused as a job would refuse it."""
    import json

    import bench_gpu

    out = tmp_path / "gpu.json"
    opts = bench_gpu.parse(["--tiny", "--steps", "1", "--only", "sft+packing", "sft+liger",
                            "dpo", "--json", str(out)])  # fmt: skip
    bench_gpu.main(opts)
    result = json.loads(out.read_text())
    assert result["model"]["parameters"] > 0 and result["peak_tflops"] == 989.0
    by_case = {r["case"]: r for r in result["results"]}
    assert set(by_case) == {"sft+packing", "sft+liger", "dpo"}
    for case in ("sft+packing", "dpo"):
        assert by_case[case]["timed_steps"] == 1 and by_case[case]["tokens_per_second"] > 0
    if not torch.cuda.is_available():
        assert "liger_kernel: no CUDA GPU" in by_case["sft+liger"]["refused"]
