"""Compile one kernel for this node's toolchain, offline (ftflow.kernels.build)."""

import sys

from ftflow.kernels import build

if "snakemake" in globals():
    sys.stderr = sys.stdout = open(snakemake.log[0], "w")  # noqa: F821
    build.main(
        kernel_spec=snakemake.params.kernel,  # noqa: F821
        toolchain=snakemake.params.toolchain,  # noqa: F821
        cuda_archs=snakemake.params.cuda_archs,  # noqa: F821
        archive=snakemake.input.archive,  # noqa: F821
        origin=snakemake.input.origin,  # noqa: F821
        manifest=snakemake.output.manifest,  # noqa: F821
        mem_mb=snakemake.resources.mem_mb,  # noqa: F821
        cpus=snakemake.threads,  # noqa: F821
    )
