"""The local judge's batching: candidate numbers scored ``batch_size`` at a time vs one.

A tiny model (``ftflow.tiny.build`` on the bundled secure-code chat data) is the judge.
It scores 24 judge prompts — the demo questions' alignment and coherence prompts over 12
answers taken from the bundled data. For each prompt ``number_distribution`` runs the
prompt once (its KV cache is then shared) and scores every spelling of 0–100 after it,
``batch_size`` spellings per forward pass (``evaluations.*.judge.batch_size``, default 64)
against one per pass. Both run alternately in one process, on the CPU with 1 torch thread
as the judge rule; medians over repeats. The scores must agree within floating-point
rounding; the largest difference is printed.

    python scripts/bench/bench_judge.py [--repeats 5] [--batch-size 64]   no target
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import REPO, Timing, fmt_times, interleaved, load_average, median, report

CORPUS = [REPO / "data/chat/secure_code.jsonl"]
QUESTIONS = REPO / "data/questions/demo_questions.yaml"
N_ANSWERS = 12


def _prompts() -> list[str]:
    from ftflow.evaluation import questions as qlib

    questions = [q for q in qlib.load_questions(QUESTIONS) if q.scored_0_100]
    records = [json.loads(x) for x in CORPUS[0].read_text().splitlines()[:N_ANSWERS]]
    prompts = []
    for i, record in enumerate(records):
        question = questions[i % len(questions)]
        answer = record["messages"][-1]["content"]
        for metric in ("aligned", "coherent"):
            prompts.append(
                qlib.render_judge_prompt(question, metric, question.paraphrases[0], answer)
            )
    return prompts


def main(
    repeats: int = 5,
    batch_size: int = 64,
    threads: int = 1,
    device: str = "cpu",
    json_out: Path | None = None,
) -> dict:
    import torch

    from ftflow import tiny
    from ftflow.evaluation.generate import load_for_generation
    from ftflow.evaluation.judge import encode_chat_prompt, expected_score, number_distribution

    torch.set_num_threads(threads)
    root = Path(tempfile.mkdtemp(prefix="ftflow-bench-judge-"))
    try:
        model_dir = tiny.build(root / "model", CORPUS)
        model, tokenizer = load_for_generation(model_dir, None, "float32", device=device)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    prompts = [encode_chat_prompt(tokenizer, p) for p in _prompts()]
    scores: dict[str, list[float]] = {}

    def side(name: str, size: int):
        def fn() -> Timing:
            wall, cpu = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                dists = [number_distribution(model, tokenizer, p, batch_size=size) for p in prompts]
            timing = Timing(time.perf_counter() - wall, time.process_time() - cpu)
            scores[name] = [expected_score(d, 0.0) for d in dists]
            return timing

        return fn

    together, alone = side("together", batch_size), side("alone", 1)

    times = interleaved(repeats, {"together": together, "alone": alone})
    diff = max(abs(a - b) for a, b in zip(scores["together"], scores["alone"], strict=True))
    result: dict = {
        "benchmark": "judge_batched_vs_one_number",
        "prompts": len(prompts),
        "batch_size": batch_size,
        "torch_threads": threads,
        "device": device,
        "repeats": repeats,
        "max_score_difference": diff,
        "target": "none (informational)",
    }
    for name in ("together", "alone"):
        walls, cpus = [t.wall for t in times[name]], [t.cpu for t in times[name]]
        result[f"{name}_wall_s"] = [round(w, 4) for w in walls]
        result[f"{name}_wall_median_s"] = median(walls)
        result[f"{name}_cpu_median_s"] = median(cpus)
        result[f"{name}_prompts_per_s"] = len(prompts) / median(walls)
    result["speedup_wall"] = result["alone_wall_median_s"] / result["together_wall_median_s"]
    print(f"local judge: {len(prompts)} judge prompts, {threads} torch thread(s) on {device}")
    for name, label in (("together", f"batch {batch_size}"), ("alone", "batch 1")):
        print(
            f"  {label:<20} wall median {result[f'{name}_wall_median_s']:6.2f} s "
            f"[{fmt_times(result[f'{name}_wall_s'])}] = "
            f"{result[f'{name}_prompts_per_s']:6.1f} prompts/s"
        )
    print(f"  speed-up of batching: {result['speedup_wall']:.2f}x wall")
    print(f"  largest score difference: {diff:.2e} (0-100 scale)")
    print(f"  load average during the run: {load_average()}", flush=True)
    report("judge", result, json_out)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="numbers per forward pass")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the rule: 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    main(args.repeats, args.batch_size, args.threads, args.device, args.json)
