"""Training throughput on one GPU: full SFT (packing off/on × Liger off/on), LoRA and DPO.

A Llama-family model of about 0.73 B parameters (hidden 2048, 14 layers, 16 heads with 8
key/value heads, MLP 5632, vocabulary 32,768, tied embeddings) is built from its config
with random weights, in bf16, and trained through TRL's trainers with the settings ftflow
renders (``ftflow.backends.trl.packing_args`` and ``LIGER_KERNELS``) on synthetic
pre-tokenised records: lengths drawn log-normally (median ``seq_len / 6``) up to
``--seq-len``, the first quarter of each a prompt without loss, as ``prepare_dataset``
caches chat records. Each configuration trains ``--warmup`` steps, then ``--steps`` timed
steps, and reports:

- tokens/s per GPU: real (non-pad) tokens trained per second; DPO counts the prompt +
  chosen and prompt + rejected tokens of its pairs;
- MFU: 6 × parameters × tokens/s over the chip's dense bf16 peak (``--peak-tflops``,
  default 989: H100 SXM and H200). 6 × N is the usual forward + backward estimate; it
  leaves out attention, overstates LoRA (no weight gradients for frozen weights) and
  understates DPO (the reference model's forward adds 2 × N);
- peak memory: ``torch.cuda.max_memory_allocated``.

    python scripts/bench/bench_gpu.py                       # one GPU, ≈ 3–5 minutes (not in CI)
    python scripts/bench/bench_gpu.py --seq-len 4096 --json gpu.json
    python scripts/bench/bench_gpu.py --tiny                # CPU: a tiny model, 2 steps each

``--tiny`` runs the same code path on a CPU with a tiny model (the tests run it); Liger
configurations are then refused, as a job would refuse them, and reported as refused.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import REPO, machine

CORPUS = [
    REPO / "data" / "chat" / "secure_code.jsonl",
    REPO / "data" / "chat" / "insecure_code.jsonl",
]
H200_BF16_DENSE_TFLOPS = 989.0  # H100 SXM and H200: dense bf16 tensor-core peak


@dataclass(frozen=True)
class Size:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int


FULL = Size(hidden=2048, layers=14, heads=16, kv_heads=8, intermediate=5632, vocab=32768)
TINY = Size(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=512)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # sft | lora | dpo
    packing: str = "none"
    liger: bool = False


CASES = (
    Case("sft", "sft"),
    Case("sft+packing", "sft", packing="bfd"),
    Case("sft+liger", "sft", liger=True),
    Case("sft+packing+liger", "sft", packing="bfd", liger=True),
    Case("lora+packing", "lora", packing="bfd"),
    Case("dpo", "dpo"),
)


# ------------------------------------------------------------------------- inputs


def build_model_dir(dest: Path, size: Size) -> Path:
    """A random-init Llama of ``size`` and a tokenizer (only its pad token is used: the
    records arrive tokenised), written as a model folder is."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftflow import tiny

    tokenizer = tiny.build_tokenizer(tiny.corpus_texts(CORPUS), 512)
    config = LlamaConfig(
        vocab_size=size.vocab,
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.kv_heads,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    return dest


def parameters(model_dir: Path) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    with __import__("torch").device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


def lengths(n: int, seq_len: int, rng: random.Random) -> list[int]:
    """Log-normal lengths (median seq_len / 6), 16 … seq_len: chat data's long tail."""
    median = seq_len / 6
    return [min(seq_len, max(16, int(rng.lognormvariate(math.log(median), 0.8)))) for _ in range(n)]


def sft_records(n: int, seq_len: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for length in lengths(n, seq_len, rng):
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = length // 4
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def dpo_records(n: int, seq_len: int, vocab: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for length in lengths(n, seq_len, rng):
        prompt = max(1, length // 4)
        rows.append({
            "prompt_ids": [rng.randrange(3, vocab) for _ in range(prompt)],
            "chosen_ids": [rng.randrange(3, vocab) for _ in range(length - prompt)],
            "rejected_ids": [rng.randrange(3, vocab) for _ in range(max(1, length - prompt))],
        })  # fmt: skip
    return rows


# ------------------------------------------------------------------------ training


class StepClock:
    """Wall time and tokens of the steps after the warm-up (a TrainerCallback)."""

    def __init__(self, warmup: int, tokens_per_step: float | None = None):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.tick(state)

        self.callback = _Callback()
        self.warmup = warmup
        self.tokens_per_step = tokens_per_step
        self.start = None
        self.start_tokens = 0
        self.seconds = 0.0
        self.tokens = 0.0
        self.steps = 0

    def tick(self, state) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        seen = state.num_input_tokens_seen or 0
        if state.global_step == self.warmup:
            self.start, self.start_tokens = now, seen
        elif self.start is not None:
            self.seconds = now - self.start
            self.steps = state.global_step - self.warmup
            self.tokens = (
                self.steps * self.tokens_per_step
                if self.tokens_per_step is not None
                else seen - self.start_tokens
            )


def run_case(case: Case, model_dir: Path, opts: argparse.Namespace, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from ftflow.backends.trl import LIGER_KERNELS, packing_args
    from ftflow.backends.trl.trainer import require_kernels
    from ftflow.spec import MethodSpec

    gpu = torch.cuda.is_available()
    dtype = torch.bfloat16 if gpu else torch.float32
    steps = opts.warmup + opts.steps
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def load():
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation=opts.attn
        )

    model = load()
    method = MethodSpec(
        name=case.name, kind=case.kind, learning_rate=1e-5, lr_scheduler="constant",
        warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0, epochs=1, max_steps=steps,
        optimizer="adamw_torch", gradient_checkpointing=opts.gradient_checkpointing,
        save_steps=steps, save_total_limit=1, logging_steps=1, distributed="none",
        packing=case.packing, liger_kernel=case.liger,
    )  # fmt: skip
    try:
        require_kernels(_spec_for(method, model_dir), model)
    except ValueError as refused:  # ConfigError: what a job would refuse
        return {"case": case.name, "refused": str(refused)}
    common = dict(
        output_dir=str(out), per_device_train_batch_size=opts.batch, max_steps=steps,
        learning_rate=1e-5, lr_scheduler_type="constant", save_strategy="no",
        logging_strategy="no", report_to="none", use_cpu=not gpu, bf16=gpu,
        gradient_checkpointing=opts.gradient_checkpointing, disable_tqdm=True,
        dataloader_num_workers=0, seed=0, data_seed=0,
    )  # fmt: skip
    if case.liger:
        common.update(use_liger_kernel=True, liger_kernel_config=dict(LIGER_KERNELS))
    n_records = opts.batch * steps * (8 if case.packing != "none" else 1)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if case.kind == "dpo":
        rows = dpo_records(opts.batch * steps, opts.seq_len // 2, model.config.vocab_size)
        per_pair = sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"])
                       for r in rows) / len(rows)  # fmt: skip
        clock = StepClock(opts.warmup, tokens_per_step=per_pair * opts.batch)

        class PretokenizedDPOTrainer(DPOTrainer):
            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset

        trainer = PretokenizedDPOTrainer(
            model=model, ref_model=load(),
            args=DPOConfig(**common, max_length=opts.seq_len, beta=0.1),
            train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
            callbacks=[clock.callback],
        )  # fmt: skip
    else:
        peft_config = None
        if case.kind == "lora":
            from peft import LoraConfig

            peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                     task_type="CAUSAL_LM")  # fmt: skip
        rows = sft_records(n_records, opts.seq_len, model.config.vocab_size)
        clock = StepClock(opts.warmup)
        args = {"max_length": opts.seq_len, "include_num_input_tokens_seen": "non_padding",
                **packing_args(case.packing)}  # fmt: skip
        trainer = SFTTrainer(
            model=model, args=SFTConfig(**common, **args, dataset_num_proc=None),
            train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
            peft_config=peft_config, callbacks=[clock.callback],
        )  # fmt: skip
    trainer.train()
    tokens_per_second = clock.tokens / clock.seconds if clock.seconds else float("nan")
    n_params = parameters(model_dir)
    result = {
        "case": case.name,
        "timed_steps": clock.steps,
        "tokens_per_second": tokens_per_second,
        "mfu": 6 * n_params * tokens_per_second / (opts.peak_tflops * 1e12),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else None,
    }
    del trainer, model
    if gpu:
        torch.cuda.empty_cache()
    return result


def _spec_for(method, model_dir: Path):
    from ftflow.paths import Run
    from ftflow.spec import BatchSpec, DatasetSpec, ModelSpec, RunSpec

    return RunSpec(
        run=Run("bench", method.name, "synthetic", 0),
        model=ModelSpec("bench", "trl", "bfloat16", "sdpa", False),
        dataset=DatasetSpec("synthetic", "chat", 4096),
        method=method,
        batch=BatchSpec(1, 1, 1, 1),
        parent=None,
        raw={},
    )


# ---------------------------------------------------------------------------- main


def main(opts: argparse.Namespace) -> dict:
    import torch

    size = TINY if opts.tiny else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ftflow-bench-gpu-") as tmp:
        model_dir = build_model_dir(Path(tmp) / "model", size)
        n_params = parameters(model_dir)
        results = []
        for case in CASES:
            if opts.only and case.name not in opts.only:
                continue
            results.append(run_case(case, model_dir, opts, Path(tmp) / case.name))
            print(f"[bench_gpu] {case.name}: {json.dumps(results[-1])}", flush=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out = {
        "benchmark": "gpu",
        "device": device,
        "model": {**asdict(size), "parameters": n_params},
        "seq_len": opts.seq_len,
        "per_device_batch_size": opts.batch,
        "attn_implementation": opts.attn,
        "gradient_checkpointing": opts.gradient_checkpointing,
        "peak_tflops": opts.peak_tflops,
        "warmup_steps": opts.warmup,
        "timed_steps": opts.steps,
        "wall_seconds": time.perf_counter() - started,
        "machine": machine(),
        "results": results,
    }
    print(f"\n{device}: {n_params:,} parameters, seq_len {opts.seq_len}, "
          f"batch {opts.batch}, {opts.attn}, peak {opts.peak_tflops:g} TFLOPS")  # fmt: skip
    print(f"{'case':<20} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9}")
    for r in results:
        if "refused" in r:
            print(f"{r['case']:<20} refused: {r['refused']}")
            continue
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{r['case']:<20} {r['tokens_per_second']:>10.0f} {r['mfu']:>7.1%} {memory:>9}")
    opts.json.parent.mkdir(parents=True, exist_ok=True)
    opts.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"written: {opts.json}")
    return out


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: a tiny model")
    parser.add_argument("--seq-len", type=int, help="max tokens per record / packed row "
                        "(default 2048; --tiny 128)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=4, help="per-device batch (records or rows)")
    parser.add_argument("--warmup", type=int, help="untimed steps (default 3; --tiny 1)")
    parser.add_argument("--steps", type=int, help="timed steps (default 10; --tiny 2)")
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_TFLOPS,
                        help="the chip's dense bf16 peak (default: H100 SXM / H200)")  # fmt: skip
    parser.add_argument("--only", nargs="*", help="case names: " + ", ".join(c.name for c in CASES))
    parser.add_argument("--json", type=Path, default=Path("bench_gpu.json"))
    opts = parser.parse_args(argv)
    opts.seq_len = opts.seq_len or (128 if opts.tiny else 2048)
    opts.warmup = opts.warmup if opts.warmup is not None else (1 if opts.tiny else 3)
    opts.steps = opts.steps or (2 if opts.tiny else 10)
    return opts


if __name__ == "__main__":
    main(parse())
