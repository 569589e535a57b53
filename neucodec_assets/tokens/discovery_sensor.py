"""`shard_discovery_sensor`: picks up new shards in the bucket as partitions of `shards`.

It only adds partitions: encoding the new shards is the asset's own automation condition's business, so the
sensor never requests runs. Each tick lists a bounded stretch of the bucket and keeps its place in the sensor
cursor (`neucodec_assets.tokens.discovery.DiscoveryCursor`), so a tick stays well inside the sensor timeout at 100,000
shards and a shard is still found within one sweep wherever its key sorts.

Settings: ``NEUCODEC_DISCOVERY_INTERVAL_SECONDS`` (read when the code location loads), and
``NEUCODEC_DISCOVERY_KEYS_PER_TICK`` / ``NEUCODEC_DISCOVERY_LIST_SECONDS`` (read per tick; whichever ends first).
"""

# No `from __future__ import annotations`: Dagster reads the config and resource types from the runtime
# annotations of the decorated function.

import dagster as dg

from gpu_executor.settings import Settings, default_of, load_settings
from neucodec_assets.tokens.discovery import (
    DiscoveryCursor,
    ListingBudget,
    discover_incremental,
)
from neucodec_assets.tokens.partitions import shards_partitions
from resources.dagster_resources import BucketResource


def listing_budget(settings: Settings | None = None) -> ListingBudget:
    """Read per tick, so a changed setting applies without reloading the code location."""
    settings = settings if settings is not None else load_settings()
    return ListingBudget(max_keys=settings.discovery_keys_per_tick, seconds=settings.discovery_list_seconds)


def discover_shards(context: dg.SensorEvaluationContext, bucket: BucketResource) -> dg.SensorResult:
    """One tick: list a stretch of the bucket and add the shards it found as partitions."""
    existing = context.instance.get_dynamic_partitions(shards_partitions.name)
    tick = discover_incremental(bucket.open(), existing, DiscoveryCursor.parse(context.cursor), listing_budget())
    cursor = tick.cursor.serialize()
    if not tick.plan.new:
        return dg.SensorResult(skip_reason=tick.summary(), cursor=cursor)
    context.log.info(tick.summary())
    return dg.SensorResult(
        dynamic_partitions_requests=[shards_partitions.build_add_request(tick.plan.new_keys)], cursor=cursor,
    )


def discovery_sensor(interval_seconds: int = default_of("discovery_interval_seconds")) -> dg.SensorDefinition:
    """The sensor; its interval (NEUCODEC_DISCOVERY_INTERVAL_SECONDS) is set when the code location loads."""
    return dg.sensor(
        name="shard_discovery_sensor",
        description="Lists the bucket a stretch per tick (a cursor: new keys after the last one seen, plus a sweep "
        "that wraps around) and adds every new shard as a partition of `shards`.",
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )(discover_shards)


shard_discovery_sensor = discovery_sensor()
