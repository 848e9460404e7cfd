"""Every README command that needs no cluster and no network runs exactly as written.

The commands are read from the README's ``bash``/``sh`` code blocks (a trailing ``\\``
joins lines; comments are kept, bash ignores them) and run with ``bash -c`` in a private
copy of the finished default workspace (the session fixture ``default_run``: the default
workflow has already run once). Skipped, by the rules in :data:`SKIP`:

- installing (``pip install``, ``scripts/install-system-deps.sh``): network and system state;
- the test suite itself (``python -m pytest``);
- cluster commands (``--profile slurm``, ``sbatch``, ``srun``, ``squeue``, SLURM settings);
- an experiment's prefetch (``--until prefetch… --configfile config/experiments/…``): network;
- a command with a placeholder (``…``, ``<model>``) the reader fills in.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

SKIP = {
    "install (network)": re.compile(r"\bpip install\b|install-system-deps"),
    "the test suite itself": re.compile(r"\bpython -m pytest\b"),
    "cluster": re.compile(r"--profile slurm|\bsbatch\b|\bsrun\b|\bsqueue\b|FTFLOW_SLURM_"),
    # an experiment's prefetch downloads its hub models and datasets
    "prefetch of an experiment (network)": re.compile(r"--until prefetch.*config/experiments/"),
    "a placeholder to fill in": re.compile(r"…|<\w+>"),
}


def readme_commands(text: str) -> list[str]:
    commands, block = [], None
    for line in text.split("\n"):
        if block is None:
            if re.fullmatch(r"```(bash|sh|console)?\s*", line.strip()) and line.strip() != "```":
                block = []
            continue
        if line.strip() == "```":
            joined = "\n".join(block).replace("\\\n", " ")
            commands += [c.strip() for c in joined.split("\n") if c.strip()]
            commands = [c for c in commands if not c.startswith("#")]
            block = None
            continue
        block.append(line)
    return commands


def skip_reason(command: str) -> str | None:
    return next((why for why, pattern in SKIP.items() if pattern.search(command)), None)


COMMANDS = readme_commands(README.read_text())


def test_the_readme_commands_are_found_and_the_skips_are_listed():
    assert "snakemake plan --forcerun plan --cores 1" in " ".join(COMMANDS)
    assert any(c.startswith("python -m ftflow.plan --configfile") for c in COMMANDS)
    skipped = [c for c in COMMANDS if skip_reason(c)]
    pattern = r"pip install|install-system-deps|pytest|slurm|prefetch|…|<\w+>"
    assert all(re.search(pattern, c, re.IGNORECASE) for c in skipped)
    assert len(COMMANDS) - len(skipped) >= 6


@pytest.mark.parametrize("command", [c for c in COMMANDS if not skip_reason(c)])
def test_readme_command_runs_as_written(command, finished_copy):
    # A clone has docs/ (the rule graph's home); the workflow copy of conftest has not.
    (finished_copy / "docs").mkdir(exist_ok=True)
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=finished_copy,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
