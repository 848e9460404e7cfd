"""The ``publish:`` block: which runs go to the Hugging Face Hub, under which repo id.

A repo id is ``<organisation>/<name>``, built by :func:`repo_id` and nowhere else. Both parts
are single path segments: a name that carries a namespace of its own (``acme/tiny-lora``, or
the organisation twice) is refused, so an id like ``acme/acme/tiny-lora`` cannot be built.

Raises :class:`ConfigError` naming the config key and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ftflow.config.errors import BASE_METHOD, ConfigError
from ftflow.config.resolve import runs
from ftflow.paths import Run

# The Hub's rule for a namespace or a repo name (huggingface_hub's validate_repo_id):
# letters, digits, '.', '_', '-', at most 96 characters, no '--' or '..', no '.git' ending.
_SEGMENT = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?")
SEGMENT_RULE = (
    "letters, digits, '.', '_' and '-', at most 96 characters, starting and ending with a "
    "letter or digit, without '--' or '..'"
)


@dataclass(frozen=True)
class PublishTarget:
    """One run to publish and the Hub repo it goes to."""

    run: Run
    repo_id: str
    private: bool


def _segment(value: object, where: str, what: str) -> str:
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise ConfigError(f"config key {where}: {value!r} is not a valid {what} ({SEGMENT_RULE})")
    if "--" in value or ".." in value or value.endswith(".git"):
        raise ConfigError(
            f"config key {where}: {value!r} is not a valid {what} "
            "(the Hub refuses '--', '..' and a '.git' ending)"
        )
    return value


def repo_id(
    organisation: str,
    name: str,
    *,
    where_organisation: str = "publish.organisation",
    where_name: str = "publish.runs[].name",
) -> str:
    """The Hub repo id ``<organisation>/<name>``; both must be single path segments."""
    if isinstance(organisation, str) and "/" in organisation:
        raise ConfigError(
            f"config key {where_organisation}: {organisation!r} holds a '/': the organisation "
            "is one Hub namespace (a user or an organisation); the repo name goes in "
            f"{where_name}"
        )
    _segment(organisation, where_organisation, "Hub namespace")
    if isinstance(name, str) and "/" in name:
        head = name.split("/", 1)[0]
        if head == organisation:
            raise ConfigError(
                f"config key {where_name}: {name!r} repeats the organisation {organisation!r}: "
                f"give the repo name alone — the repo id is {where_organisation} + '/' + "
                f"name, e.g. {organisation}/{name.rsplit('/', 1)[-1]}"
            )
        raise ConfigError(
            f"config key {where_name}: {name!r} holds a '/': a repo name is one path segment; "
            f"its owner is {where_organisation} ({organisation!r})"
        )
    _segment(name, where_name, "repo name")
    return f"{organisation}/{name}"


def publish_targets(config: Mapping) -> dict[Run, PublishTarget]:
    """Every run the ``publish:`` block names, with its repo; empty without the block.

    Checks each entry: a run of the grid (not a base row: it has no fine-tuned model), a valid
    repo id, no run and no repo id named twice.
    """
    block = config.get("publish")
    if not block:
        return {}
    planned = set(runs(config))
    targets: dict[Run, PublishTarget] = {}
    seen: dict[str, str] = {}
    for i, entry in enumerate(block["runs"]):
        where = f"publish.runs[{i}]"
        run = Run(entry["model"], entry["method"], entry["dataset"], int(entry["seed"]))
        if run.method == BASE_METHOD or run not in planned:
            raise ConfigError(
                f"config key {where}: run {run} is not a run of the grid, so it has no final "
                "model to publish (allowed: " + ", ".join(str(r) for r in sorted(planned)) + ")"
            )
        if run in targets:
            raise ConfigError(f"config key {where}: run {run} is named twice in publish.runs")
        repo = repo_id(block["organisation"], entry["name"], where_name=f"{where}.name")
        if repo in seen:
            raise ConfigError(
                f"config key {where}.name: repo {repo} is already the repo of {seen[repo]} "
                "(one repo per run)"
            )
        seen[repo] = where
        targets[run] = PublishTarget(run, repo, bool(entry["private"]))
    return targets
