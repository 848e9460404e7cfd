"""``python -m ftflow.plan``."""

import sys

from ftflow.plan import cli

sys.exit(cli())
