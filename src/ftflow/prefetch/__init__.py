"""Download everything a run needs, on the login node, before any job reaches a compute node.

On the clusters ftflow targets, login nodes reach the internet and compute nodes do not.
Local Snakemake rules (``localrules``) call the functions here to put every external input
under the project's ``resources/`` directory; jobs on compute nodes then only read local
paths, with the Hugging Face libraries in offline mode (see :mod:`ftflow.offline`).

* :func:`fetch_url` -- one file from ``http(s)://`` or ``file://``, checked against a sha256.
* :func:`fetch_hub` -- a model or dataset repo from the Hugging Face Hub at a pinned commit.
* :func:`copy_local` -- a local file or directory copied into the project.

Guarantees: a destination path either holds the complete, verified result or does not exist.
Every function writes into a temporary sibling of ``dest`` (same directory, hence the same
filesystem) and moves it into place with a rename only once it is complete; on any failure
the temporary is removed. Re-running with a destination that is already complete does nothing.

Assumptions: the process can reach the URL / the Hub (it runs on the login node); the Hub
endpoint is ``HF_ENDPOINT`` (default https://huggingface.co); the Hub token, if any, is in
``HF_TOKEN`` (or the token file of ``hf auth login``) and is read by ``huggingface_hub``
itself -- this module never reads, passes, logs or stores it.

Errors: every failure is raised as :class:`PrefetchError`, with the URL or repo in the message
and the underlying exception chained as ``__cause__``.
"""

from ftflow.files import sha256_file
from ftflow.prefetch.common import MANIFEST_NAME, PrefetchError
from ftflow.prefetch.hub import fetch_hub
from ftflow.prefetch.local import copy_local, fetch_url

__all__ = [
    "MANIFEST_NAME",
    "PrefetchError",
    "copy_local",
    "fetch_hub",
    "fetch_url",
    "sha256_file",
]
