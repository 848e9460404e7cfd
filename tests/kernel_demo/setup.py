"""A tiny compiled torch extension that builds the way mamba_ssm and causal_conv1d do.

The test suite's stand-in for them (their CUDA builds take hours and need a CUDA torch):
a C++ extension compiled against the installed torch, with the same build switches —
``DEMO_KERNEL_FORCE_BUILD=TRUE`` skips the attempt to download a prebuilt wheel (which,
as in theirs, aborts offline: only an HTTP error falls back to compiling), and
``DEMO_KERNEL_LOCAL_VERSION`` becomes the wheel's local version.
"""

import os
import urllib.error
import urllib.request

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from torch.utils.cpp_extension import BuildExtension, CppExtension

FORCE_BUILD = os.getenv("DEMO_KERNEL_FORCE_BUILD", "FALSE") == "TRUE"
LOCAL_VERSION = os.getenv("DEMO_KERNEL_LOCAL_VERSION")
PREBUILT = "http://127.0.0.1:9/demo_kernel-prebuilt.whl"  # nothing listens: refused


class CachedWheels(bdist_wheel):
    def run(self):
        if FORCE_BUILD:
            return super().run()
        print("Guessing wheel URL:", PREBUILT)
        try:
            urllib.request.urlretrieve(PREBUILT, "prebuilt.whl")
        except urllib.error.HTTPError:
            print("Precompiled wheel not found. Building from source...")
            return super().run()


setup(
    name="demo_kernel",
    version="0.1.0" + (f"+{LOCAL_VERSION}" if LOCAL_VERSION else ""),
    packages=["demo_kernel"],
    ext_modules=[CppExtension("demo_kernel._C", ["csrc/demo_kernel.cpp"])],
    cmdclass={"bdist_wheel": CachedWheels, "build_ext": BuildExtension},
)
