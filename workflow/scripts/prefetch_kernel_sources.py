"""Fetch one kernel's pinned source archive into resources/kernels/src/ (login node)."""

import sys

from ftflow import files
from ftflow.kernels import Kernel, fetch

if "snakemake" in globals():
    sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821
    spec = dict(snakemake.params.kernel)  # noqa: F821
    kernel = Kernel(**{**spec, "imports": tuple(spec["imports"])})
    origin = fetch.fetch(kernel, snakemake.output.archive)  # noqa: F821
    files.write_json(snakemake.output.origin, origin)  # noqa: F821
    print(f"[ftflow] {kernel.name}: {snakemake.output.archive} sha256 {origin['sha256']}")  # noqa: F821
