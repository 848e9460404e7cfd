"""`prepare_dataset` cold vs warm: `ftflow.prepare.prepare` twice, nothing changed in between.

Cold: an empty cache — validate, sample, tokenise with the chat template, write parquet.
Warm: the same call again — it must find the entry by its key (sha256 of the raw file
and of the tokenizer files, plus the settings) and do no work: no record is read, no
tokenizer is loaded, neither the entry nor the (unchanged) manifest is rewritten.
In-process timings (imports paid before timing), medians over repeats.

    python scripts/bench/bench_prepare.py [--repeats 5] [--scale 1]    target: >= 50x
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import REPO, fmt_times, load_average, median, report

TARGET = 50.0
RAW = REPO / "data/chat/secure_code.jsonl"
CORPUS = [REPO / "data/chat/insecure_code.jsonl", REPO / "data/chat/secure_code.jsonl"]


def _timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def check_warm_does_no_work(prepare, raw, model_dir, manifest, cache_root, settings) -> None:
    """Call prepare once more with the work paths instrumented; any call is a failure.

    The cache entry's files and the manifest (same inode, same mtime) must be left alone.
    """
    import transformers

    from ftflow import records

    calls = []
    saved = (records.load_records, transformers.AutoTokenizer.from_pretrained)
    saved_write = prepare._write_entry

    def spy(name, fn):
        def wrapper(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)

        return wrapper

    def stamps() -> dict:
        paths = [*Path(cache_root).rglob("*"), Path(manifest)]
        return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}

    entries = stamps()
    records.load_records = spy("load_records", records.load_records)
    transformers.AutoTokenizer.from_pretrained = spy("AutoTokenizer", saved[1])
    prepare._write_entry = spy("_write_entry", saved_write)
    try:
        info = prepare.prepare(raw, model_dir, manifest, cache_root, settings)
    finally:
        records.load_records, transformers.AutoTokenizer.from_pretrained = saved
        prepare._write_entry = saved_write
    touched = sorted(str(p) for p, stamp in stamps().items() if entries.get(p) != stamp)
    if calls or not info["reused"] or touched:
        raise RuntimeError(
            f"the warm prepare did work: calls {calls}, reused {info['reused']}, "
            f"rewritten {touched}"
        )


def main(repeats: int = 5, scale: int = 1, json_out: Path | None = None) -> dict:
    from ftflow import prepare, tiny

    root = Path(tempfile.mkdtemp(prefix="ftflow-bench-prepare-"))
    try:
        model_dir = tiny.build(root / "model", CORPUS)
        raw = root / "data.jsonl"
        raw.write_text(RAW.read_text() * scale)
        settings = prepare.Settings(format="chat", fraction=1.0, sample_seed=0, max_length=256)
        # Pay the imports (transformers, pyarrow) once, outside the timings.
        prepare.prepare(raw, model_dir, root / "w.json", root / "warmup", settings)

        cold, warm, n_records = [], [], 0
        for i in range(repeats):
            cache_root = root / f"cache{i}"
            manifest = root / f"manifest{i}.json"

            def call(cache_root=cache_root, manifest=manifest):
                return prepare.prepare(raw, model_dir, manifest, cache_root, settings)

            wall, cpu, info = _timed(call)
            assert not info["reused"]
            cold.append((wall, cpu))
            n_records = info["n_records"]
            for _ in range(3):
                wall, cpu, info = _timed(call)
                assert info["reused"]
                warm.append((wall, cpu))
        check_warm_does_no_work(
            prepare, raw, model_dir, root / "manifest0.json", root / "cache0", settings
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)

    result = {
        "benchmark": "prepare_cold_vs_warm",
        "records": n_records,
        "raw_bytes": len(RAW.read_bytes()) * scale,
        "repeats": repeats,
        "cold_wall_s": [round(w, 5) for w, _ in cold],
        "warm_wall_s": [round(w, 5) for w, _ in warm],
        "cold_wall_median_s": median([w for w, _ in cold]),
        "warm_wall_median_s": median([w for w, _ in warm]),
        "cold_cpu_median_s": median([c for _, c in cold]),
        "warm_cpu_median_s": median([c for _, c in warm]),
        "warm_did_no_work": True,
    }
    result["speedup_wall"] = result["cold_wall_median_s"] / result["warm_wall_median_s"]
    result["speedup_cpu"] = result["cold_cpu_median_s"] / max(result["warm_cpu_median_s"], 1e-6)
    result["target"] = f"speedup >= {TARGET:g}"
    result["met"] = result["speedup_wall"] >= TARGET
    print(f"prepare {n_records} chat records ({result['raw_bytes']:,} bytes of JSONL)")
    print(
        f"  cold  median {result['cold_wall_median_s'] * 1000:8.1f} ms "
        f"[{fmt_times([w * 1000 for w in result['cold_wall_s']])}]"
    )
    print(
        f"  warm  median {result['warm_wall_median_s'] * 1000:8.2f} ms "
        f"[{fmt_times([w * 1000 for w in result['warm_wall_s']])}]"
    )
    verdict = "met" if result["met"] else "MISSED"
    print(f"  speedup {result['speedup_wall']:.0f}x wall (target >= {TARGET:g}x: {verdict})")
    print("  warm call: no record read, no tokenizer loaded, cache entry and manifest untouched")
    print(f"  load average during the run: {load_average()}", flush=True)
    report("prepare", result, json_out)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", type=int, default=1, help="repeat the bundled records K times")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    main(args.repeats, args.scale, args.json)
