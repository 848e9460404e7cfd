"""Running the workflow through `--profile slurm` on the local SLURM of the tests, and
reading back what SLURM ran (sacct), for the test files that use the cluster."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import load_default_config, snakemake
from slurm_cluster import LocalSlurm, available

OK, WHY = available()
if not OK and os.environ.get("FTFLOW_REQUIRE_SLURM") == "1":
    raise RuntimeError(f"FTFLOW_REQUIRE_SLURM=1 but {WHY}")

# A test module's pytestmark: slow, real SLURM, skipped (never silently) without one.
MARKS = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(not OK, reason=WHY)]

PROFILE = ("--profile", "slurm", "--slurm-init-seconds-before-status-checks", "1")


def profile_env(slurm: LocalSlurm) -> dict:
    """The site variables a user sets once for the profile."""
    return {
        **slurm.env,
        "FTFLOW_SLURM_ACCOUNT": slurm.account,
        "FTFLOW_SLURM_PARTITION": slurm.partition,
    }


def profile_run(slurm: LocalSlurm, work: Path, *args: str, timeout=1800):
    """`snakemake --profile slurm` exactly as a user types it, with the site variables set."""
    return snakemake(work, *PROFILE, *args, env=profile_env(slurm), timeout=timeout)


def rule_of(row: dict) -> str:
    """The plugin's sbatch --comment is rule_<name>[_wildcards_<values>]."""
    return row["Comment"].removeprefix("rule_").split("_wildcards_")[0]


def workflow_jobs(slurm: LocalSlurm, work: Path, rule: str | None = None) -> list[dict]:
    """sacct's rows of the jobs the workflow in ``work`` submitted (of one rule)."""
    rows = [r for r in slurm.sacct_jobs() if Path(r["WorkDir"]).resolve() == work.resolve()]
    return [r for r in rows if rule is None or rule_of(r) == rule]


def one_run_config(**sft) -> dict:
    """The default config reduced to one run (tiny/sft/secure_code/seed3), its method
    updated with ``sft``."""
    config = load_default_config()
    config.pop("evaluations")
    config["methods"]["sft"].update(sft)
    config["grid"] = [
        {"models": ["tiny"], "methods": ["sft"], "datasets": ["secure_code"], "seeds": [3]}
    ]
    return config
