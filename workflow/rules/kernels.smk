# Compiled kernels (ftflow.kernels): only models with `needs_kernels` depend on them.
# The sources are fetched where Snakemake runs (the login node, with internet); each
# kernel is compiled offline on a compute node, once per build key (source, patch,
# toolchain, CUDA archs), into resources/kernels/{toolchain}/{build}/ — not an output,
# so a finished key is never deleted; the manifest beside it is what jobs depend on.


rule prefetch_kernel_sources:
    input:
        get_kernel_source_files,
    output:
        archive=kernels.KERNEL_SOURCE,
        origin=KERNEL_ORIGIN,
    log:
        paths.log("prefetch_kernel_sources", "{kernel}"),
    wildcard_constraints:
        kernel=never_matches(KERNEL_PACKAGES),
    localrule: True
    conda:
        "../../envs/trl.yaml"
    params:
        kernel=lambda wildcards: kernel_spec(KERNEL_PACKAGES[wildcards.kernel]),
    script:
        "../scripts/prefetch_kernel_sources.py"


rule build_kernels:
    input:
        archive=lambda wildcards: _kernel_build(wildcards).source,
        origin=lambda wildcards: kernel_origin(_kernel_build(wildcards)),
        patch=lambda wildcards: _kernel_build(wildcards).kernel.patch or [],
    output:
        manifest=kernels.KERNEL_MANIFEST,
    log:
        paths.log("build_kernels", "{toolchain}", "{build}"),
    benchmark:
        paths.benchmark("build_kernels", "{toolchain}", "{build}")
    wildcard_constraints:
        toolchain=never_matches({b.toolchain_id for b in KERNEL_BUILDS.values()}),
        build=never_matches({b.name for b in KERNEL_BUILDS.values()}),
    conda:
        "../../envs/automodel.yaml"
    threads: KERNEL_RESOURCES["cpus_per_task"]
    resources:
        cpus_per_task=KERNEL_RESOURCES["cpus_per_task"],
        mem_mb=KERNEL_RESOURCES["mem_mb"],
        runtime=KERNEL_RESOURCES["runtime"],
        gres=KERNEL_RESOURCES.get("gres"),
        tasks_per_gpu=KERNEL_RESOURCES.get("tasks_per_gpu"),
        constraint=KERNEL_RESOURCES.get("constraint"),
    params:
        kernel=lambda wildcards: kernel_spec(_kernel_build(wildcards).kernel),
        toolchain=lambda wildcards: dict(_kernel_build(wildcards).toolchain),
        cuda_archs=lambda wildcards: list(_kernel_build(wildcards).cuda_archs),
    script:
        "../scripts/build_kernels.py"
