"""Quality gates: snakemake --lint, snakefmt --check, ruff check and ruff format --check."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "snakemake", "--lint"],
        ["snakefmt", "--check", "."],
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
    ],
    ids=["snakemake-lint", "snakefmt", "ruff-check", "ruff-format"],
)
def test_quality_gate(command):
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    if "--lint" in command:
        assert "Congratulations" in proc.stdout + proc.stderr
