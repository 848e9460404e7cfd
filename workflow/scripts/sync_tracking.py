"""Upload the offline W&B runs of finished trainings (the sync_tracking rule)."""

import sys
from pathlib import Path

from ftflow import tracking


def main(folders: list[str], settings: dict, out: Path) -> None:
    tracking.sync_main([Path(f) for f in folders], settings, out)


if "snakemake" in globals():
    sys.stdout = sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    try:
        main(
            list(snakemake.params.folders),  # noqa: F821
            dict(snakemake.params.wandb),  # noqa: F821
            Path(snakemake.output.synced),  # noqa: F821
        )
    except tracking.SyncError as error:
        print(f"[ftflow] error: {error}", flush=True)
        sys.__stderr__.write(f"sync_tracking: {error}\n")
        raise SystemExit(1) from None
