"""Shorten the node labels of ``snakemake --dag`` for planning pictures.

Snakemake labels each job with one line per wildcard (``model: …``, ``method: …``, …);
for a real grid that makes every node five lines tall. This filter rewrites a label to
the rule name plus the run identity in the results-path form
(``nemotron-3-nano/lora/insecure/seed42``)::

    snakemake --dag | python -m ftflow.dag | dot -Tsvg > dag.svg
"""

from __future__ import annotations

import re
import sys

ORDER = ("model", "method", "dataset", "seed", "evaluation")
_LABEL = re.compile(r'label = "([^"]*)"')


def short_label(label: str) -> str:
    rule, *lines = label.split("\\n")
    values = dict(line.split(": ", 1) for line in lines if ": " in line)
    if not values:
        return rule
    parts = [values[k] if k != "seed" else f"seed{values[k]}" for k in ORDER if k in values]
    parts += [v for k, v in sorted(values.items()) if k not in ORDER]
    return f"{rule}\\n{'/'.join(parts)}"


def shorten(dot: str) -> str:
    return _LABEL.sub(lambda m: f'label = "{short_label(m.group(1))}"', dot)


if __name__ == "__main__":
    sys.stdout.write(shorten(sys.stdin.read()))
