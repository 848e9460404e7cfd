"""One `train` job on the tiny model: `python -m ftflow.train run.yaml` vs a bare TRL script.

The default workflow is run in a scratch copy up to the run's `configure_run` and
`prepare_dataset`; then, alternately, ftflow's trainer and `bare_trl_train.py` (same
model, same tokenised rows, same batch sizes and number of steps, same checkpoint
cadence) each train from scratch in a fresh process. Whole-process times are compared.

    python scripts/bench/bench_train.py [--repeats 5] [--method sft]   target: ratio <= 1.10
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import PYTHON, compare, copy_workflow, interleaved, report, timed_run

HERE = Path(__file__).parent
TARGET = 1.10
# As the train rule runs it (OMP_NUM_THREADS={threads}), offline, on the CPU.
ENV = {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "",
    "TOKENIZERS_PARALLELISM": "false",
}


def setup(workdir: Path, run: str, dataset_model: tuple[str, str]) -> None:
    model, dataset = dataset_model
    copy_workflow(workdir)
    subprocess.run(
        [
            PYTHON, "-m", "snakemake", "--cores", "2",
            f"results/{run}/run.yaml", f"resources/prepared/{model}/{dataset}.json",
        ],
        cwd=workdir, check=True, capture_output=True,
    )  # fmt: skip


def bare_command(workdir: Path, run: str, out: Path) -> list[str]:
    cfg = yaml.safe_load((workdir / f"results/{run}/run.yaml").read_text())
    method, batch, model = cfg["method"], cfg["batch"], cfg["run"]["model"]
    manifest = json.loads(
        (workdir / f"resources/prepared/{model}/{cfg['run']['dataset']}.json").read_text()
    )
    return [
        PYTHON, str(HERE / "bare_trl_train.py"),
        "--model", str(workdir / f"resources/models/{model}"),
        "--data", str(workdir / manifest["entry"] / "data.parquet"),
        "--out", str(out),
        "--lr", str(method["learning_rate"]),
        "--scheduler", method["lr_scheduler"],
        "--batch", str(batch["per_device_batch_size"]),
        "--accum", str(batch["gradient_accumulation_steps"]),
        "--epochs", str(method["epochs"]),
        "--save-steps", str(method["save_steps"]),
        "--save-total-limit", str(method["save_total_limit"]),
        "--logging-steps", str(method["logging_steps"]),
        "--max-length", str(cfg["dataset"]["max_length"]),
        "--seed", str(cfg["run"]["seed"]),
    ]  # fmt: skip


def main(
    repeats: int = 5, method: str = "sft", json_out: Path | None = None, keep: bool = False
) -> dict:
    if method not in ("sft", "lora"):
        raise SystemExit("--method: sft or lora (the bare script does SFT, with no adapter)")
    run = f"tiny/{method}/secure_code/seed1"
    root = Path(tempfile.mkdtemp(prefix="ftflow-bench-train-"))
    workdir, bare_out = root / "ftflow", root / "bare"
    try:
        setup(workdir, run, ("tiny", "secure_code"))
        run_dir = workdir / "results" / run

        def ftflow() -> object:
            for name in ("checkpoints", "final"):
                shutil.rmtree(run_dir / name, ignore_errors=True)
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
            return timed_run(
                [PYTHON, "-m", "ftflow.train", f"results/{run}/run.yaml"], workdir, ENV
            )

        def bare() -> object:
            shutil.rmtree(bare_out, ignore_errors=True)
            return timed_run(bare_command(workdir, run, bare_out), workdir, ENV)

        if method == "lora":
            raise SystemExit("the bare baseline is SFT only")
        times = interleaved(repeats, {"ftflow": ftflow, "bare": bare})
        ftflow_steps = len((run_dir / "metrics.jsonl").read_text().splitlines())
        bare_steps = json.loads((bare_out / "state.json").read_text())["global_step"]
        if ftflow_steps != bare_steps:
            raise RuntimeError(f"steps differ: ftflow {ftflow_steps}, bare {bare_steps}")
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    result = {"benchmark": "train", "run": run, "steps": bare_steps, "repeats": repeats}
    title = f"train {run}: {bare_steps} optimizer steps, one whole process each"
    result.update(compare(title, times, TARGET))
    report("train", result, json_out)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--method", default="sft", help="the default config's sft method")
    parser.add_argument("--json", type=Path, help="also write the result here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args()
    main(args.repeats, args.method, args.json, args.keep)
