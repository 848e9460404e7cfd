"""Train one run, with the backend its model names.

Usage (what the ``train`` rule runs, under ``python``, ``torchrun`` or
``accelerate launch``)::

    python -m ftflow.train results/<model>/<method>/<dataset>/seed<seed>/run.yaml

Contract, the same for every backend (:mod:`ftflow.backends`, :mod:`ftflow.lifecycle`):

- reads ``run.yaml`` (the resolved config), the prefetched model and the prepared
  dataset manifest; runs offline, from the workflow root;
- writes resumable state under ``checkpoints/`` (not a Snakemake output, so it
  survives a failed or killed attempt) and resumes from the newest *complete*
  checkpoint, but only from checkpoints made for exactly this run
  (:mod:`ftflow.checkpoints`);
- writes ``metrics.jsonl`` (one line per logged step, the contract's keys) and
  ``final/`` (full weights, or the adapter for LoRA) only at the end, atomically,
  with no absolute paths inside;
- loads the compiled kernels its model needs from their builds, or stops naming the
  import that failed (:func:`ftflow.kernels.require`);
- stops with :class:`NonFiniteLossError` as soon as a logged loss is NaN or Inf;
- on USR1 (SLURM's warning before the time limit) or TERM (preemption) writes a complete
  checkpoint at the end of the current step and exits with status 75
  (:mod:`ftflow.interrupt`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ftflow import checkout, interrupt, kernels, launch, lifecycle, offline, paths, spec, torchutil
from ftflow.backends import metric_keys  # noqa: F401  (the contract's keys, re-exported)
from ftflow.checkpoints import StaleCheckpointsError
from ftflow.lifecycle import MetricsContractError, NonFiniteLossError


def main(run_config: Path) -> Path:
    return lifecycle.run(spec.load(run_config))


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_config", type=Path, help="the run's run.yaml")
    args = parser.parse_args(argv)
    launch.die_with_launcher()
    interrupt.install()
    offline.apply_offline(paths.RESOURCES)
    print(f"[ftflow] code: {checkout.code_dir()}", flush=True)
    try:
        # The compiled kernels the model needs (FTFLOW_KERNELS, set by the train rule):
        # checked before training, never left to a silent pure-torch fallback.
        for line in kernels.require():
            print(f"[ftflow] {line}", flush=True)
        main(args.run_config)
        print(f"[ftflow] peak memory {torchutil.peak_memory_mb():.0f} MB", flush=True)
    except interrupt.Interrupted as stopped:
        print(f"[ftflow] {stopped}", file=sys.stderr, flush=True)
        return interrupt.EXIT_CODE
    except (
        kernels.KernelError,
        NonFiniteLossError,
        MetricsContractError,
        StaleCheckpointsError,
        offline.NotPrefetchedError,
    ) as error:
        print(f"[ftflow] error: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(cli())
