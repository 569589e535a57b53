"""`shard_discovery_sensor`: picks up new shards in the bucket as partitions, and optionally starts encoding them.

Settings (environment of the code location):
- ``NEUCODEC_DISCOVERY_INTERVAL_SECONDS`` (default 300): how often the bucket is listed;
- ``NEUCODEC_DISCOVERY_LAUNCH`` (default ``none``): ``backfill`` also requests a backfill of `neucodec_tokens`
  for new shards that have no tokens file yet. A backfill (not one run per shard) so that the backfill policy
  groups shards into runs and each run loads the model once.
"""

# No `from __future__ import annotations`: Dagster reads the config and resource types from the runtime
# annotations of the decorated function.

import os

import dagster as dg

from gpu_executor.k8s import gpu_run_tags
from neucodec_assets.discovery import plan_discovery
from neucodec_assets.partitions import shards_partitions
from neucodec_assets.tokens_metadata import TOKENS_ASSET_KEY
from resources.dagster_resources import BucketResource
from resources.env_settings import env_number

INTERVAL_ENV = "NEUCODEC_DISCOVERY_INTERVAL_SECONDS"
LAUNCH_ENV = "NEUCODEC_DISCOVERY_LAUNCH"
DEFAULT_INTERVAL_SECONDS = 300
LAUNCH_MODES = ("none", "backfill")


def discovery_interval_seconds() -> int:
    return env_number(INTERVAL_ENV, int, default=DEFAULT_INTERVAL_SECONDS, minimum=1)


def discovery_launch_mode() -> str:
    mode = os.environ.get(LAUNCH_ENV, "").strip().lower() or "none"
    if mode not in LAUNCH_MODES:
        raise ValueError(f"{LAUNCH_ENV}={mode!r}: choose one of {', '.join(LAUNCH_MODES)}")
    return mode


def tokens_backfill_request(keys: list[str]) -> dg.RunRequest:
    """A request that the sensor daemon turns into an asset backfill of `neucodec_tokens` over ``keys``."""
    from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset

    subset = AssetGraphSubset(
        partitions_subsets_by_asset_key={TOKENS_ASSET_KEY: shards_partitions.subset_with_partition_keys(keys)}
    )
    tags = {"neucodec/requested_by": "shard_discovery_sensor", **gpu_run_tags()}
    return dg.RunRequest.for_asset_graph_subset(subset, tags=tags)


@dg.sensor(
    name="shard_discovery_sensor",
    description="Lists the bucket and adds every new shard as a partition of `shards`; "
    f"with {LAUNCH_ENV}=backfill it also requests a backfill of the new shards that have no tokens file.",
    minimum_interval_seconds=discovery_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[TOKENS_ASSET_KEY],
)
def shard_discovery_sensor(context: dg.SensorEvaluationContext, bucket: BucketResource) -> dg.SensorResult:
    existing = context.instance.get_dynamic_partitions(shards_partitions.name)
    plan = plan_discovery(bucket.open(), existing)
    if not plan.new:
        return dg.SensorResult(skip_reason=f"no new shards among {len(plan.listed)} in the bucket")
    context.log.info(f"{len(plan.new)} new shards (of {len(plan.listed)} listed)")
    run_requests: list[dg.RunRequest] = []
    if discovery_launch_mode() == "backfill" and plan.new_without_tokens:
        run_requests.append(tokens_backfill_request(plan.new_without_tokens))
    return dg.SensorResult(
        dynamic_partitions_requests=[shards_partitions.build_add_request(plan.new_keys)],
        run_requests=run_requests,
    )
