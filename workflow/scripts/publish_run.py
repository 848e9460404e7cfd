"""Push one run's final/ and its model card to the Hugging Face Hub (ftflow.publish).

The token is read from HF_TOKEN by ftflow.publish itself, never from the rule.
"""

import sys
from pathlib import Path

from ftflow import publish

if "snakemake" in globals():
    sys.stderr = open(snakemake.log[0], "w")  # noqa: F821
    try:
        publish.main(
            final=Path(snakemake.input.final),  # noqa: F821
            run_config=Path(snakemake.input.run_config),  # noqa: F821
            model_dir=Path(snakemake.input.model),  # noqa: F821
            evaluations=[Path(p) for p in snakemake.input.evaluations],  # noqa: F821
            datasets=snakemake.params.datasets,  # noqa: F821
            repo_id=snakemake.params.repo_id,  # noqa: F821
            private=snakemake.params.private,  # noqa: F821
            out=Path(snakemake.output.record),  # noqa: F821
        )
    except publish.PublishError as error:
        print(f"publish failed: {error}", file=sys.stderr)
        sys.exit(1)
