"""The shard partitions: one dynamic partition per shard prefix of the bucket (keys may contain '/')."""

import dagster as dg

SHARDS_PARTITION_NAME = "shards"

shards_partitions = dg.DynamicPartitionsDefinition(name=SHARDS_PARTITION_NAME)
