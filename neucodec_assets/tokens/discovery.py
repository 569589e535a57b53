"""Shard discovery: list the bucket and find the shards that are not yet partitions of the instance.

Shared by `shard_discovery_sensor` (which hands the new keys to Dagster in its SensorResult, one bounded
stretch of the bucket per tick: see `DiscoveryCursor`) and `neucodec-platform discover` (which lists everything
and adds the new keys through the instance), since no Dagster CLI command adds dynamic partitions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import dagster as dg

from gpu_executor.settings import default_of
from neucodec_assets.tokens.partitions import shards_partitions
from resources.bucket import Bucket, ShardInfo
from resources.bucket.base import shards_from_keys


@dataclass
class DiscoveryPlan:
    """The bucket's shards split into those already known as partitions and the new ones."""

    listed: list[ShardInfo]
    new: list[ShardInfo]
    known: list[ShardInfo] = field(default_factory=list)
    keys_listed: int = 0  # objects read from the bucket's listing to make this plan

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
    keys = list(bucket.list_keys(prefix))
    return _split(shards_from_keys(keys, bucket.layout), existing, len(keys))


def _split(listed: list[ShardInfo], existing: set[str], keys_listed: int) -> DiscoveryPlan:
    new = [s for s in listed if s.prefix not in existing]
    known = [s for s in listed if s.prefix in existing]
    return DiscoveryPlan(listed=listed, new=new, known=known, keys_listed=keys_listed)


@dataclass(frozen=True)
class DiscoveryCursor:
    """Where incremental discovery stands: a tail and a wrapping sweep, so no tick lists the whole bucket.

    Why two positions: listing 100,000 shards (300,000 objects, 300 list requests) does not fit a sensor tick,
    so each tick reads a bounded number of keys. New shards usually sort after everything seen (the next shard
    number, a later dataset name): the *tail* pass lists after ``tail`` (the greatest key read so far) and finds
    them on the next tick for the price of one request. New shards can also sort before ``tail`` (a new
    language folder ``emilia/aa/...``, a re-uploaded shard): the *sweep* pass walks ``("", tail]`` from
    ``sweep`` with the budget the tail pass left, and wraps to the start when it reaches ``tail``. So every shard
    is found within one sweep period, ``ceil(objects / keys_per_tick)`` ticks (6 ticks for 100,000 shards of
    3 objects at 50,000 keys a tick). While the tail pass still has a backlog (the first ticks over a new
    bucket, a bulk upload) it takes the whole budget. A lost or unreadable cursor only means starting over.
    """

    tail: str = ""
    sweep: str = ""
    sweeps: int = 0  # completed sweeps, for the tick's log line

    def serialize(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def parse(cls, raw: str | None) -> "DiscoveryCursor":
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            return cls(tail=str(data["tail"]), sweep=str(data["sweep"]), sweeps=int(data.get("sweeps", 0)))
        except (ValueError, KeyError, TypeError):
            return cls()  # a cursor from another version: list from the start again


@dataclass(frozen=True)
class ListingBudget:
    """How much of the bucket one tick may list: ``max_keys`` objects and ``seconds`` of listing, whichever
    ends first (a slow endpoint still leaves the tick inside the sensor timeout)."""

    max_keys: int = default_of("discovery_keys_per_tick")
    seconds: float = default_of("discovery_list_seconds")


@dataclass
class IncrementalDiscovery:
    plan: DiscoveryPlan
    cursor: DiscoveryCursor
    tail_caught_up: bool  # False: keys after the tail remain to be read (the budget went to them)
    swept_to: str | None  # where the sweep pass stopped this tick; None when it did not run

    def summary(self) -> str:
        where = ("backlog after the tail" if not self.tail_caught_up
                 else f"swept to {self.swept_to!r}" if self.swept_to is not None else "tail only")
        return (f"{len(self.plan.new)} new of {len(self.plan.listed)} shards in {self.plan.keys_listed} keys "
                f"listed ({where}; {self.cursor.sweeps} full sweeps so far)")


def discover_incremental(bucket: Bucket, existing_keys: Iterable[str], cursor: DiscoveryCursor,
                         budget: ListingBudget = ListingBudget()) -> IncrementalDiscovery:
    """One tick of incremental discovery: the tail pass, then the sweep pass (see `DiscoveryCursor`)."""
    existing = set(existing_keys)
    deadline = time.monotonic() + budget.seconds
    tail = bucket.list_shards_page(cursor.tail, max_keys=max(1, budget.max_keys), deadline=deadline)
    listed = list(tail.shards)
    keys_listed = tail.keys_listed
    new_cursor = DiscoveryCursor(tail=tail.last_key, sweep=cursor.sweep, sweeps=cursor.sweeps)
    swept_to: str | None = None
    left = budget.max_keys - tail.keys_listed
    if tail.complete and cursor.tail and left > 0 and time.monotonic() < deadline:
        sweep = bucket.list_shards_page(cursor.sweep, max_keys=left, deadline=deadline, until=cursor.tail)
        seen = {s.prefix for s in listed}
        listed += [s for s in sweep.shards if s.prefix not in seen]
        keys_listed += sweep.keys_listed
        swept_to = sweep.last_key
        if sweep.complete:  # reached the old tail: everything up to it has been read again
            new_cursor = DiscoveryCursor(tail=tail.last_key, sweep="", sweeps=cursor.sweeps + 1)
        else:
            new_cursor = DiscoveryCursor(tail=tail.last_key, sweep=sweep.last_key, sweeps=cursor.sweeps)
    listed.sort(key=lambda s: s.prefix)
    return IncrementalDiscovery(_split(listed, existing, keys_listed), new_cursor,
                                tail_caught_up=tail.complete, swept_to=swept_to)


def add_shard_partitions(instance: dg.DagsterInstance, keys: Iterable[str]) -> list[str]:
    """Add ``keys`` (those not there yet) as partitions of `shards`; returns the keys added."""
    existing = set(instance.get_dynamic_partitions(shards_partitions.name))
    new = sorted(set(keys) - existing)
    if new:
        instance.add_dynamic_partitions(shards_partitions.name, new)
    return new
