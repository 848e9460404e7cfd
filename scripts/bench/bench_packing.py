"""Padded vs padding-free vs BFD-packed SFT on the tiny model, on the CPU: tokens/s.

The tiny Llama of the default config (``ftflow.tiny.build``) trains one epoch of full SFT
on the bundled chat records (``data/chat/secure_code.jsonl``, tokenised by
``ftflow.prepare.tokenize_chat``, assistant-only labels) through TRL's ``SFTTrainer`` with
the settings ftflow renders for each ``packing`` value (``ftflow.backends.trl.packing_args``).
The modes run alternately (A B C A B C …, one discarded warm-up round); the figures are
medians of real (non-pad) tokens per second of ``trainer.train()`` — per wall second and
per CPU second of this process (what a loaded, shared machine disturbs least; torch runs
on ``--threads`` threads) — and the token positions each mode computes (pad included).

    python scripts/bench/bench_packing.py [--repeats 5] [--attn sdpa] [--batch 8] [--scale 1]

No target is set: packing removes pad positions, and with ``sdpa``/``eager`` attention
runs over the whole packed row under a block-diagonal mask (quadratic in the row), so
which wins depends on the lengths, the batch and the attention implementation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import REPO, load_average, machine, report

MODES = ("none", "padding_free", "bfd")
DATA = REPO / "data" / "chat" / "secure_code.jsonl"
CORPUS = [
    REPO / "data" / "chat" / "secure_code.jsonl",
    REPO / "data" / "chat" / "insecure_code.jsonl",
]
MAX_LENGTH = 512  # the default config's dataset max_length


def tiny_model(dest: Path) -> Path:
    """The default config's tiny Llama (same sizes and seed), built into ``dest``."""
    from ftflow import tiny

    return tiny.build(dest, CORPUS, vocab_size=512, hidden_size=64, intermediate_size=128,
                      num_layers=2, num_heads=4, seed=0)  # fmt: skip


def records(model_dir: Path, scale: int = 1) -> list[dict]:
    """The bundled chat records as ``prepare_dataset`` caches them: input_ids + labels."""
    from transformers import AutoTokenizer

    from ftflow.prepare import tokenize_chat

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for line in DATA.read_text().splitlines():
        row = tokenize_chat(tokenizer, json.loads(line)["messages"], MAX_LENGTH)
        rows.append({"input_ids": row["input_ids"], "labels": row["labels"]})
    return rows * scale


def trainer(model_dir: Path, rows: list[dict], packing: str, attn: str, batch: int, out: Path):
    """TRL's SFTTrainer with the arguments ftflow renders for ``packing``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from ftflow.backends.trl import packing_args

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attn
    )
    args = SFTConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        num_train_epochs=1,
        learning_rate=1e-4,
        seed=1,
        data_seed=1,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataset_num_proc=None,
        **{
            "max_length": MAX_LENGTH,
            "include_num_input_tokens_seen": "non_padding",
            **packing_args(packing),
        },
    )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )


def positions(sft_trainer) -> tuple[int, int, int]:
    """(token positions computed, real tokens, optimizer steps) of one epoch."""
    computed = real = steps = 0
    for batch in sft_trainer.get_train_dataloader():
        computed += batch["input_ids"].numel()
        mask = batch.get("attention_mask")
        real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        steps += 1
    return computed, real, steps


def measure(model_dir: Path, rows: list[dict], packing: str, attn: str, batch: int) -> dict:
    """One epoch of training in ``packing`` mode: real tokens/s, positions, steps."""
    with tempfile.TemporaryDirectory(prefix="ftflow-bench-packing-") as out:
        sft = trainer(model_dir, rows, packing, attn, batch, Path(out))
        computed, real, steps = positions(sft)
        start, cpu_start = time.perf_counter(), time.process_time()
        sft.train()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "tokens_per_second": real / seconds,
        "tokens_per_cpu_second": real / cpu,
        "positions": computed,
        "real_tokens": real,
        "steps": steps,
    }


def main(repeats: int = 5, attn: str = "sdpa", batch: int = 8, scale: int = 1,
         threads: int = 1, json_out: Path | None = None) -> dict:  # fmt: skip
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="ftflow-bench-packing-model-") as tmp:
        model_dir = tiny_model(Path(tmp) / "tiny")
        rows = records(model_dir, scale)
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for i in range(repeats + 1):
            for mode in MODES:
                result = measure(model_dir, rows, mode, attn, batch)
                if i:  # the first round warms up
                    runs[mode].append(result)
    result = {
        "benchmark": "packing",
        "attn_implementation": attn,
        "per_device_batch_size": batch,
        "records": len(rows),
        "repeats": repeats,
        "threads": threads,
        "load_average": load_average(),
        "machine": machine(),
        "modes": {},
    }
    print(f"packing: tiny Llama, {len(rows)} records, batch {batch}, {attn}, {threads} thread(s)")
    print(
        f"  {'mode':<13} {'tokens/s':>9} {'tok/CPU-s':>9} {'positions':>9} {'real':>6} "
        f"{'steps':>5}  wall runs (s)"
    )
    for mode in MODES:
        seconds = [r["seconds"] for r in runs[mode]]
        first = runs[mode][0]
        row = {
            "tokens_per_second_median": statistics.median(
                r["tokens_per_second"] for r in runs[mode]
            ),
            "tokens_per_cpu_second_median": statistics.median(
                r["tokens_per_cpu_second"] for r in runs[mode]
            ),
            "seconds": [round(s, 3) for s in seconds],
            "cpu_seconds": [round(r["cpu_seconds"], 3) for r in runs[mode]],
            "positions": first["positions"],
            "real_tokens": first["real_tokens"],
            "steps": first["steps"],
        }
        result["modes"][mode] = row
        print(
            f"  {mode:<13} {row['tokens_per_second_median']:>9.0f} "
            f"{row['tokens_per_cpu_second_median']:>9.0f} {row['positions']:>9} "
            f"{row['real_tokens']:>6} {row['steps']:>5}  {', '.join(f'{s:.2f}' for s in seconds)}"
        )
    none = result["modes"]["none"]
    for mode in MODES[1:]:
        row = result["modes"][mode]
        row["speedup_wall"] = row["tokens_per_second_median"] / none["tokens_per_second_median"]
        row["speedup_cpu"] = (
            row["tokens_per_cpu_second_median"] / none["tokens_per_cpu_second_median"]
        )
        print(f"  {mode}: {row['speedup_wall']:.2f}× the padded tokens/s (wall), "
              f"{row['speedup_cpu']:.2f}× (CPU)")  # fmt: skip
    print(f"  load average after the run: {load_average()}")
    report("packing", result, json_out)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--batch", type=int, default=8, help="per-device batch (records or rows)")
    parser.add_argument("--scale", type=int, default=1, help="repeat the 64 records this often")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    main(args.repeats, args.attn, args.batch, args.scale, args.threads, args.json)
