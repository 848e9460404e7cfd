"""The `plan` rule: every job the workflow would run, its GPU-hours and cost (ftflow.plan).

Plans the running workflow's own config (``replace_config``: exactly the config this run
resolved, --configfile and --config included) for the default target. The table goes to
the terminal, the full table (every job) to the log, the CSV to the rule's output.
"""

import sys
from pathlib import Path

from ftflow import plan


def main(out: Path, snakefile: Path, config: dict) -> plan.Plan:
    result = plan.main(out, plan.DagRequest(snakefile, config=config, replace_config=True))
    print(plan.format_plan(result, max_jobs=None), file=sys.stderr, flush=True)
    return result


if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    main(
        Path(snakemake.output.csv),  # noqa: F821
        Path(snakemake.params.snakefile),  # noqa: F821
        dict(snakemake.config),  # noqa: F821
    )
