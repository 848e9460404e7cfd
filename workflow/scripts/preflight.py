"""The `preflight` rule: `sbatch --test-only` per SLURM job of the plan (ftflow.plan.preflight).

Checks the running workflow's own config (``replace_config``) for the default target, with
the running snakemake's profile settings (``params.settings``). The report goes to the
terminal, the log and results/plan/preflight.{json,txt}; the job fails, naming the
impossible jobs, when SLURM would refuse any of them.
"""

import sys
from pathlib import Path

from ftflow.plan import DagRequest, PlanError, preflight


class _Both:
    """The terminal and the log: a failed rule's log is not shown unless asked for."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> None:
        for stream in self.streams:
            stream.write(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def main(snakefile: Path, config: dict, settings: dict, log=None) -> int:
    out = _Both(sys.stdout, *([log] if log else []))
    err = _Both(sys.stderr, *([log] if log else []))
    try:
        request = DagRequest(snakefile, config=config, replace_config=True)
        preflight.main(settings, request, stream=out)
    except PlanError as error:
        print(f"[ftflow] preflight failed: {error}", file=err, flush=True)
        return 1
    return 0


if "snakemake" in globals():
    with open(snakemake.log[0], "w") as log:  # noqa: F821
        code = main(
            Path(snakemake.params.snakefile),  # noqa: F821
            dict(snakemake.config),  # noqa: F821
            dict(snakemake.params.settings),  # noqa: F821
            log,
        )
    sys.exit(code)
