"""Run jobs on compute nodes that have no internet: offline Hugging Face settings.

Everything a job reads was put under the project's ``resources/`` directory on the login node
(see :mod:`ftflow.prefetch`). The job side makes sure nothing tries the network and that every
Hugging Face cache lives inside ``resources/`` (a shared filesystem the compute nodes see):

* :func:`offline_env` -- the environment variables for a job (e.g. for a Snakemake ``envvars``
  / ``shell`` prefix or a SLURM script);
* :func:`apply_offline` -- the same, set in ``os.environ`` of the current process. Call it
  *before* importing ``huggingface_hub``, ``transformers`` or ``datasets``: they read these
  variables once, at import time;
* :func:`require_prefetched` -- fail early, naming the Snakemake target to run on the login
  node, when a prefetched input is missing.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

__all__ = [
    "OFFLINE_ENV",
    "NotPrefetchedError",
    "apply_offline",
    "offline_env",
    "require_prefetched",
]

OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
"""Tell huggingface_hub, datasets and transformers never to reach the network."""

_READ_AT_IMPORT = ("huggingface_hub", "transformers", "datasets")


def offline_env(resources: Path | str) -> dict[str, str]:
    """:data:`OFFLINE_ENV` plus caches inside ``resources``.

    ``HF_HOME`` is ``<resources>/hf_home`` and ``HF_DATASETS_CACHE`` is
    ``<resources>/hf_home/datasets``, as absolute paths, so a job finds them whatever its
    working directory is.
    """
    hf_home = Path(os.path.abspath(resources)) / "hf_home"
    return {
        **OFFLINE_ENV,
        "HF_HOME": str(hf_home),
        "HF_DATASETS_CACHE": str(hf_home / "datasets"),
    }


def apply_offline(resources: Path | str) -> dict[str, str]:
    """Set :func:`offline_env` in ``os.environ`` and return what was set.

    Warns (``RuntimeWarning``) if ``huggingface_hub``, ``transformers`` or ``datasets`` is
    already imported: they read these variables at import time, so the settings would not
    reach them.
    """
    env = offline_env(resources)
    early = [name for name in _READ_AT_IMPORT if name in sys.modules]
    if early:
        warnings.warn(
            f"apply_offline() called after importing {', '.join(early)}; they read "
            f"{', '.join(sorted(env))} at import time, so call it before those imports",
            RuntimeWarning,
            stacklevel=2,
        )
    os.environ.update(env)
    return env


class NotPrefetchedError(FileNotFoundError):
    """An input that must be downloaded on the login node is not there."""

    def __init__(self, message: str, *, path: Path, what: str, target: str) -> None:
        super().__init__(message)
        self.path = path
        self.what = what
        self.target = target

    def __str__(self) -> str:
        return str(self.args[0])


def require_prefetched(path: Path | str, what: str, target: str) -> Path:
    """Return ``path`` if it exists (an empty directory does not count).

    Otherwise raise :class:`NotPrefetchedError` telling which Snakemake ``target`` to build on
    a machine with internet access.
    """
    path = Path(path)
    if path.is_dir():
        present = any(path.iterdir())
        state = "is an empty directory"
    else:
        present = path.exists()
        state = "is missing"
    if not present:
        raise NotPrefetchedError(
            f"{what} not prefetched: {path} {state} — run `snakemake --cores 1 {target}` "
            f"on a machine with internet (the login node) first; compute nodes cannot download",
            path=path,
            what=what,
            target=target,
        )
    return path
