"""GPU check of the kernel builds (not in CI: needs an NVIDIA GPU, nvcc and a CUDA torch).

Run from the repository root, after the sources were fetched on a machine with internet
(``snakemake --cores 1 --until prefetch_kernel_sources --configfile
config/experiments/emergent_misalignment.yaml``, or copy ``resources/kernels/src``)::

    CUDA_HOME=/usr/local/cuda python scripts/gpu/check_kernels.py [--archs 9.0]

What it does, printing one line per step and a JSON summary at the end:

1. builds causal_conv1d and mamba_ssm with ftflow's own build job code
   (:func:`ftflow.kernels.build.build`) for the given archs, offline: time, peak memory;
2. imports ``causal_conv1d_cuda`` and ``selective_scan_cuda`` from the builds;
3. compares a bf16 forward and backward of ``causal_conv1d_fn`` and ``selective_scan_fn``
   with the packages' own pure-torch references;
4. shows that transformers resolves the kernels (``is_causal_conv1d_available``,
   ``is_mamba_2_ssm_available``) and that :func:`ftflow.kernels.require` passes;
5. trains a few steps of a tiny Nemotron-H (ftflow.tiny) in bf16 with the kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from ftflow import files, kernels  # noqa: E402
from ftflow.kernels import build  # noqa: E402


def say(message: str) -> None:
    print(f"[check] {message}", flush=True)


def build_both(archs: list[str]) -> dict[str, dict]:
    config = {
        "models": {"m": {"needs_kernels": ["causal_conv1d", "mamba_ssm"]}},
        "kernels": {"cuda_archs": archs},
    }
    records = {}
    for planned in kernels.builds(config, "m"):
        archive = Path(planned.source)
        if not archive.exists():
            sys.exit(f"{archive} is missing: run prefetch_kernel_sources first (see docstring)")
        origin = archive.with_suffix("").with_suffix(".json")
        started = time.monotonic()
        jobs = kernels.max_jobs(
            int(os.environ.get("MEM_MB", 64000)), os.cpu_count() or 1, len(archs)
        )
        record = build.build(
            planned, archive, json.loads(origin.read_text()), Path(planned.manifest), jobs
        )
        say(
            f"{planned.kernel.name}: {record['wheel']} sm_{record['compiled_sm']} "
            f"in {time.monotonic() - started:.0f} s, peak {record['peak_rss_mb']} MB"
        )
        records[planned.kernel.name] = {**record, "manifest": planned.manifest}
    return records


def compare(records: dict[str, dict]) -> dict[str, float]:
    import torch

    kernels.activate([r["manifest"] for r in records.values()])
    import causal_conv1d_cuda  # noqa: F401
    import selective_scan_cuda  # noqa: F401
    from causal_conv1d import causal_conv1d_fn
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref

    torch.manual_seed(0)
    dev, bf16 = "cuda", torch.bfloat16
    errors = {}

    def check(name, fn, ref, *inputs):
        ins = [t.detach().requires_grad_(t.is_floating_point()) for t in inputs]
        ref_ins = [t.detach().float().requires_grad_(t.is_floating_point()) for t in inputs]
        out, expected = fn(*ins), ref(*ref_ins)
        out.float().sum().backward()
        expected.sum().backward()
        fwd = (out.float() - expected).abs().max().item()
        bwd = max(
            (a.grad.float() - b.grad).abs().max().item() for a, b in zip(ins, ref_ins, strict=True)
        )
        errors[name] = {"forward_max_abs": fwd, "backward_max_abs": bwd}
        say(f"{name}: bf16 kernel vs fp32 reference, max |diff| fwd {fwd:.3g}, bwd {bwd:.3g}")

    x = torch.randn(2, 64, 512, device=dev, dtype=bf16)
    w = torch.randn(64, 4, device=dev, dtype=bf16)
    check(
        "causal_conv1d_fn",
        lambda x, w: causal_conv1d_fn(x, w, activation="silu"),
        lambda x, w: causal_conv1d_ref(x, w, activation="silu"),
        x,
        w,
    )
    batch, dim, state, length = 2, 64, 16, 256
    u = torch.randn(batch, dim, length, device=dev, dtype=bf16)
    delta = torch.rand(batch, dim, length, device=dev, dtype=bf16) * 0.1
    a = -torch.rand(dim, state, device=dev, dtype=torch.float32)
    b = torch.randn(batch, state, length, device=dev, dtype=bf16)
    c = torch.randn(batch, state, length, device=dev, dtype=bf16)
    check(
        "selective_scan_fn",
        lambda u, d, a, b, c: selective_scan_fn(u, d, a, b, c, delta_softplus=True),
        lambda u, d, a, b, c: selective_scan_ref(u, d, a, b, c, delta_softplus=True),
        u,
        delta,
        a,
        b,
        c,
    )
    return errors


def transformers_picks_them(records: dict[str, dict]) -> list[str]:
    from transformers.utils import import_utils

    picked = {
        "is_causal_conv1d_available": import_utils.is_causal_conv1d_available(),
        "is_mamba_2_ssm_available": import_utils.is_mamba_2_ssm_available(),
    }
    say(f"transformers: {picked}")
    assert all(picked.values()), picked
    lines = kernels.require([r["manifest"] for r in records.values()])
    for line in lines:
        say(line)
    return lines


def train_tiny_nemotron_h(steps: int = 8) -> list[float]:
    import torch
    from transformers import AutoModelForCausalLM

    from ftflow import tiny

    out = Path("resources/gpu_check/tiny_nemotron_h")
    if not out.exists():
        tiny.build(out, [REPO / "data/chat/secure_code.jsonl"], architecture="nemotron_h")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(3, model.config.vocab_size, (4, 256), device="cuda")
    losses = []
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(loss.item(), 4))
    say(f"tiny Nemotron-H, bf16, with the kernels: losses {losses}")
    assert losses[-1] < losses[0], losses
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=["9.0"])
    parser.add_argument("--out", default="resources/gpu_check/kernels.json")
    args = parser.parse_args()
    records = build_both(args.archs)
    summary = {
        "builds": {
            k: {f: r[f] for f in ("wheel", "compiled_sm", "compile_seconds", "peak_rss_mb")}
            for k, r in records.items()
        },
        "errors": compare(records),
        "require": transformers_picks_them(records),
        "tiny_nemotron_h_losses": train_tiny_nemotron_h(),
    }
    files.write_json(args.out, summary)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
