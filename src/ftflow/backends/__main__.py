"""Render one launch file of a run (what the ``render_launch_file`` rule runs).

Usage::

    python -m ftflow.backends results/<run>/run.yaml <name> results/<run>/launch/<name>

``<name>`` is one of the files the run's backend lists under ``launch_files`` in its
``render`` (e.g. ``deepspeed.json``); it is written atomically, as JSON or YAML by its
suffix, and never edited by hand: change the config instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ftflow import backends, files, spec


def render_launch_file(run_config: Path, name: str, out: Path) -> None:
    run = spec.load(run_config)
    backend = backends.get(run.model.backend)
    available = backend.render(run).get("launch_files", {})
    if name not in available:
        raise SystemExit(
            f"{run_config}: backend {backend.name} renders no {name} for this run "
            f"(it renders: {', '.join(available) or 'nothing'})"
        )
    settings = available[name]
    if name.endswith((".yaml", ".yml")):
        text = yaml.safe_dump(settings, sort_keys=False)
    else:
        text = json.dumps(settings, indent=2) + "\n"
    files.write_text(out, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_config", type=Path)
    parser.add_argument("name")
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    render_launch_file(args.run_config, args.name, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
