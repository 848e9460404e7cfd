"""Jobs run the code of the checkout that runs Snakemake — never another copy.

The Snakefile imports ``ftflow`` from its own ``src/`` when it has one (else the installed
package). It then exports, for every job, ``FTFLOW_CODE`` (that package's folder) and puts
its parent first on ``PYTHONPATH``. When ``ftflow`` is imported with ``FTFLOW_CODE`` set to
another folder — e.g. a second clone installed in editable mode shadows this one —
:func:`verify` raises :class:`WrongCheckoutError` naming both folders.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "FTFLOW_CODE"


class WrongCheckoutError(ImportError):
    """A job imported ftflow from another folder than the workflow's."""


def code_dir() -> Path:
    """The folder of the ``ftflow`` package this process runs."""
    return Path(__file__).resolve().parent


def job_env() -> dict[str, str]:
    """What the Snakefile exports so that every job imports this very package."""
    here = code_dir()
    path = [str(here.parent), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {ENV: str(here), "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}


def verify() -> None:
    """Refuse to run when the workflow named another ftflow folder than this one."""
    wanted = os.environ.get(ENV)
    if wanted and Path(wanted).resolve() != code_dir():
        raise WrongCheckoutError(
            f"this job imported ftflow from {code_dir()}, but the workflow runs the code in "
            f"{Path(wanted).resolve()}: another copy of ftflow shadows it (check "
            "`pip show ftflow` and PYTHONPATH), or run Snakemake from the checkout you mean"
        )
