"""`shard_discovery_sensor`: picks up new shards in the bucket as partitions of `shards`.

It only adds partitions: encoding the new shards is the asset's own automation condition's business, so the
sensor never requests runs. Each tick lists a bounded stretch of the bucket and keeps its place in the sensor
cursor (`neucodec_assets.tokens.discovery.DiscoveryCursor`), so a tick stays well inside the sensor timeout at 100,000
shards and a shard is still found within one sweep wherever its key sorts.

Settings (environment of the code location):
- ``NEUCODEC_DISCOVERY_INTERVAL_SECONDS`` (default 300): how often a tick runs;
- ``NEUCODEC_DISCOVERY_KEYS_PER_TICK`` (default 50,000): objects one tick may list (a shard is ~3 objects);
- ``NEUCODEC_DISCOVERY_LIST_SECONDS`` (default 20): listing time one tick may spend, whichever ends first.
"""

# No `from __future__ import annotations`: Dagster reads the config and resource types from the runtime
# annotations of the decorated function.

import dagster as dg

from neucodec_assets.tokens.discovery import (
    DiscoveryCursor,
    ListingBudget,
    discover_incremental,
)
from neucodec_assets.tokens.partitions import shards_partitions
from resources.dagster_resources import BucketResource
from resources.env_settings import env_number

INTERVAL_ENV = "NEUCODEC_DISCOVERY_INTERVAL_SECONDS"
KEYS_PER_TICK_ENV = "NEUCODEC_DISCOVERY_KEYS_PER_TICK"
LIST_SECONDS_ENV = "NEUCODEC_DISCOVERY_LIST_SECONDS"
DEFAULT_INTERVAL_SECONDS = 300


def discovery_interval_seconds() -> int:
    return env_number(INTERVAL_ENV, int, default=DEFAULT_INTERVAL_SECONDS, minimum=1)


def listing_budget() -> ListingBudget:
    """Read per tick (not at import), so a changed setting applies without reloading the code location."""
    default = ListingBudget()
    return ListingBudget(
        max_keys=env_number(KEYS_PER_TICK_ENV, int, default=default.max_keys, minimum=1),
        seconds=env_number(LIST_SECONDS_ENV, float, default=default.seconds, minimum=0.1),
    )


@dg.sensor(
    name="shard_discovery_sensor",
    description="Lists the bucket a stretch per tick (a cursor: new keys after the last one seen, plus a sweep "
    "that wraps around) and adds every new shard as a partition of `shards`.",
    minimum_interval_seconds=discovery_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def shard_discovery_sensor(context: dg.SensorEvaluationContext, bucket: BucketResource) -> dg.SensorResult:
    existing = context.instance.get_dynamic_partitions(shards_partitions.name)
    tick = discover_incremental(bucket.open(), existing, DiscoveryCursor.parse(context.cursor), listing_budget())
    cursor = tick.cursor.serialize()
    if not tick.plan.new:
        return dg.SensorResult(skip_reason=tick.summary(), cursor=cursor)
    context.log.info(tick.summary())
    return dg.SensorResult(
        dynamic_partitions_requests=[shards_partitions.build_add_request(tick.plan.new_keys)], cursor=cursor,
    )
