"""ftflow: the reusable logic behind the fine-tuning workflow.

Rules, scripts and tests all import from here, so that one function computes
each path, each derived number and each validation error.
"""

__version__ = "0.1.0"

from ftflow import checkout as _checkout

# A job must run the workflow's own code (see ftflow.checkout).
_checkout.verify()
