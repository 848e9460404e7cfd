"""`generate_answers` batched vs one prompt at a time, on the same answers to sample.

A tiny model (``ftflow.tiny.build`` on the bundled secure-code chat data) answers the demo
question file with a samples override: 3 questions × 2 paraphrases × 8 samples = 48
answers at temperature 1, ``max_new_tokens`` 32. Both sides call
``ftflow.evaluation.generate.generate_answers`` with the same seed; only ``batch_size``
differs (16 vs 1). They run alternately in one process (imports and model load paid
before timing, one discarded warm-up round), on the CPU with 1 torch thread as the
``generate_answers`` rule (``threads: 1``); medians over repeats, wall and CPU time.

Every answer draws its uniforms from its own seeded stream, so the two sides should
give the same answers; the benchmark reports how many rows differ (a row can differ only
when a uniform falls within floating-point rounding of a CDF boundary, see generate.py).

    python scripts/bench/bench_generate.py [--repeats 5] [--batch-size 16]   no target
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import REPO, Timing, fmt_times, interleaved, load_average, median, report

CORPUS = [REPO / "data/chat/secure_code.jsonl"]
QUESTIONS = REPO / "data/questions/demo_questions.yaml"
SAMPLES = 8  # 3 questions × 2 paraphrases × 8 = 48 answers
MAX_NEW_TOKENS = 32
SEED = 0


def main(
    repeats: int = 5,
    batch_size: int = 16,
    threads: int = 1,
    device: str = "cpu",
    json_out: Path | None = None,
) -> dict:
    import torch

    from ftflow import tiny
    from ftflow.evaluation.generate import generate_answers, load_for_generation
    from ftflow.evaluation.questions import load_questions

    torch.set_num_threads(threads)
    root = Path(tempfile.mkdtemp(prefix="ftflow-bench-generate-"))
    try:
        model_dir = tiny.build(root / "model", CORPUS)
        model, tokenizer = load_for_generation(model_dir, None, "float32", device=device)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    questions = load_questions(QUESTIONS)
    rows: dict[str, list[list[dict]]] = {"batched": [], "unbatched": []}

    def side(name: str, size: int):
        def fn() -> Timing:
            wall, cpu = time.perf_counter(), time.process_time()
            out = generate_answers(
                model,
                tokenizer,
                questions,
                seed=SEED,
                max_new_tokens=MAX_NEW_TOKENS,
                batch_size=size,
                samples_override=SAMPLES,
                progress=lambda line: None,
            )
            timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
            rows[name].append(out)
            return timing

        return fn

    times = interleaved(
        repeats, {"batched": side("batched", batch_size), "unbatched": side("unbatched", 1)}
    )

    n_answers = len(rows["batched"][0])
    tokens = sum(r["n_answer_tokens"] for r in rows["batched"][0])
    stable = {name: all(r == runs[0] for r in runs) for name, runs in rows.items()}
    pairs = list(zip(rows["batched"][0], rows["unbatched"][0], strict=True))
    differing = [
        (a["question_id"], a["paraphrase_index"], a["sample_index"])
        for a, b in pairs
        if a["answer"] != b["answer"] or a["n_answer_tokens"] != b["n_answer_tokens"]
    ]
    result: dict = {
        "benchmark": "generate_batched_vs_unbatched",
        "answers": n_answers,
        "answer_tokens": tokens,
        "max_new_tokens": MAX_NEW_TOKENS,
        "batch_size": batch_size,
        "torch_threads": threads,
        "device": device,
        "repeats": repeats,
    }
    for name in ("batched", "unbatched"):
        walls, cpus = [t.wall for t in times[name]], [t.cpu for t in times[name]]
        result[f"{name}_wall_s"] = [round(w, 4) for w in walls]
        result[f"{name}_cpu_s"] = [round(c, 4) for c in cpus]
        result[f"{name}_wall_median_s"] = median(walls)
        result[f"{name}_cpu_median_s"] = median(cpus)
        result[f"{name}_answers_per_s"] = n_answers / median(walls)
        result[f"{name}_answers_per_cpu_s"] = n_answers / median(cpus)
    result["speedup_wall"] = result["unbatched_wall_median_s"] / result["batched_wall_median_s"]
    result["speedup_cpu"] = result["unbatched_cpu_median_s"] / result["batched_cpu_median_s"]
    result["identical_answers"] = not differing
    result["n_differing_answers"] = len(differing)
    result["differing_rows"] = differing[:10]
    result["same_answers_every_repeat"] = stable
    result["target"] = "none (informational)"

    print(
        f"generate_answers: {n_answers} answers ({tokens} answer tokens), max_new_tokens "
        f"{MAX_NEW_TOKENS}, {threads} torch thread(s) on {device}"
    )
    for name, size in (("batched", batch_size), ("unbatched", 1)):
        print(
            f"  {name:<9} (batch {size:>2}) wall median {result[f'{name}_wall_median_s']:6.2f} s "
            f"[{fmt_times(result[f'{name}_wall_s'])}] = "
            f"{result[f'{name}_answers_per_s']:6.1f} answers/s   cpu median "
            f"{result[f'{name}_cpu_median_s']:6.2f} s [{fmt_times(result[f'{name}_cpu_s'])}]"
        )
    print(
        f"  speed-up of batching: {result['speedup_wall']:.2f}x wall, "
        f"{result['speedup_cpu']:.2f}x cpu"
    )
    if differing:
        print(f"  answers differ between the two on {len(differing)}/{n_answers} rows: {differing}")
    else:
        print(
            f"  answers identical between batch {batch_size} and batch 1 ({n_answers}/{n_answers})"
        )
    print(f"  same answers on every repeat: {stable}")
    print(f"  load average during the run: {load_average()}", flush=True)
    report("generate", result, json_out)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16, help="the batched side")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the rule: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    main(args.repeats, args.batch_size, args.threads, args.device, args.json)
