"""Shard discovery: list the bucket and find the shards that are not yet partitions of the instance.

Shared by `shard_discovery_sensor` (which hands the new keys to Dagster in its SensorResult) and
`neucodec-platform discover` (which adds them through the instance), since no Dagster CLI command adds
dynamic partitions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg

from neucodec_assets.partitions import shards_partitions
from resources.bucket import Bucket, ShardInfo


@dataclass
class DiscoveryPlan:
    """The bucket's shards split into those already known as partitions and the new ones."""

    listed: list[ShardInfo]
    new: list[ShardInfo]
    known: list[ShardInfo] = field(default_factory=list)

    @property
    def new_keys(self) -> list[str]:
        return [s.prefix for s in self.new]

    @property
    def new_without_tokens(self) -> list[str]:
        """New shards that still need encoding (no tokens file in the bucket yet)."""
        return [s.prefix for s in self.new if not s.has_tokens]


def plan_discovery(bucket: Bucket, existing_keys: Iterable[str], prefix: str = "") -> DiscoveryPlan:
    """List every shard under ``prefix`` and split it by whether its key is already a partition."""
    existing = set(existing_keys)
    listed = bucket.list_shards(prefix)
    new = [s for s in listed if s.prefix not in existing]
    known = [s for s in listed if s.prefix in existing]
    return DiscoveryPlan(listed=listed, new=new, known=known)


def add_shard_partitions(instance: dg.DagsterInstance, keys: Iterable[str]) -> list[str]:
    """Add ``keys`` (those not there yet) as partitions of `shards`; returns the keys added."""
    existing = set(instance.get_dynamic_partitions(shards_partitions.name))
    new = sorted(set(keys) - existing)
    if new:
        instance.add_dynamic_partitions(shards_partitions.name, new)
    return new
