"""How many shards one tokens run holds: a fixed NEUCODEC_SHARDS_PER_RUN, or `auto`, sized to the fleet.

Why `auto`: a run is one model load (and on Kubernetes one pod start and image pull), and the backfill daemon
creates runs at a few per second, so 100,000 shards in 8-shard runs are 12,500 runs to create and to schedule. With
`auto` a backfill of the missing shards gives each `gpu` pool slot about NEUCODEC_AUTOMATION_RUNS_PER_SLOT runs:
enough that a slot whose run ends finds another queued, few enough that the daemon creates them quickly. Bounded:
at least 1 shard, at most AUTO_MAX (a run's `dagster/max_runtime` grows with its shards, and a cancel or a lost
worker costs its run's remaining shards until the retry).

Computed once, when the code location loads (the backfill policy is part of the definitions): reload the code
location after a large discovery to resize.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dagster as dg

from gpu_executor.launch.coordinator import gpu_pool_slots
from gpu_executor.settings import Settings
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from neucodec_assets.tokens.partitions import shards_partitions

AUTO_MIN, AUTO_MAX = 1, 64
AUTO_WITHOUT_INSTANCE = 8  # `auto` where no instance can be read (no DAGSTER_HOME): the fixed default


def auto_shards_per_run(missing: int, slots: int, runs_per_slot: int) -> int:
    """Shards per run so that ``missing`` shards make about ``runs_per_slot`` runs per slot, within bounds."""
    runs = max(1, slots) * max(1, runs_per_slot)
    return max(AUTO_MIN, min(AUTO_MAX, math.ceil(missing / runs)))


@dataclass(frozen=True)
class RunSize:
    shards_per_run: int
    why: str  # shown on the asset page with the settings


def run_size(settings: Settings, instance: dg.DagsterInstance | None = None) -> RunSize:
    """The shards per run in effect: the setting's number, or `auto` computed from ``instance`` (default: the
    instance of DAGSTER_HOME, if any)."""
    if settings.shards_per_run != "auto":
        return RunSize(int(settings.shards_per_run), "NEUCODEC_SHARDS_PER_RUN")
    if instance is None:
        if not settings.dagster_home:  # nothing to size from
            return RunSize(AUTO_WITHOUT_INSTANCE, "auto, without a Dagster instance (DAGSTER_HOME unset)")
        with dg.DagsterInstance.get() as current:
            return run_size(settings, current)
    slots = gpu_pool_slots(instance) or 1
    keys = set(instance.get_dynamic_partitions(shards_partitions.name))
    missing = len(keys - set(instance.get_materialized_partitions(TOKENS_ASSET_KEY)))
    size = auto_shards_per_run(missing, slots, settings.automation_runs_per_slot)
    return RunSize(size, f"auto: {missing} shards without tokens, {slots} gpu slots, "
                         f"{settings.automation_runs_per_slot} runs per slot (bounds {AUTO_MIN}..{AUTO_MAX})")
