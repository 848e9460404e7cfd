"""The compiled op of the demo kernel (tests/kernel_demo/setup.py)."""

import torch  # noqa: F401  (loads libc10/libtorch, which the extension links against)

from demo_kernel._C import causal_sum

__all__ = ["causal_sum"]
