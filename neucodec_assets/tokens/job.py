"""Jobs: `neucodec_tokens_job` encodes shards (one partition, or a range through a backfill) with its checks."""

from __future__ import annotations

import dagster as dg

from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from neucodec_assets.tokens.partitions import shards_partitions

neucodec_tokens_job = dg.define_asset_job(
    name="neucodec_tokens_job",
    selection=dg.AssetSelection.assets(TOKENS_ASSET_KEY),  # includes the asset's checks
    partitions_def=shards_partitions,
    description="Encode shards into neucodec tokens files (pool `gpu`), and check each file.",
    # No GPU tags here: the run queue (GpuPoolRunCoordinator `gpu_run_tags`) adds them to every encoding run,
    # whatever job or backfill it comes from; a tag here would win over the instance's and hide the spool disk.
)
