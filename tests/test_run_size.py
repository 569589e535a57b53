"""NEUCODEC_SHARDS_PER_RUN=auto: runs sized so each `gpu` slot gets a handful, from the instance the code location
loads with (its pool limit and its shards without tokens)."""

from __future__ import annotations

import dagster as dg

from gpu_executor.settings import load_settings
from neucodec_assets.tokens.discovery import add_shard_partitions
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from neucodec_assets.tokens.run_size import AUTO_MAX, auto_shards_per_run, run_size


def test_auto_gives_each_slot_a_handful_of_runs_within_bounds() -> None:
    assert auto_shards_per_run(missing=2_000, slots=16, runs_per_slot=4) == 32  # 63 runs for 64 run slots
    assert auto_shards_per_run(missing=100_000, slots=200, runs_per_slot=4) == AUTO_MAX == 64  # 1,563 runs
    assert auto_shards_per_run(missing=10, slots=16, runs_per_slot=4) == 1  # fewer shards than slots
    assert auto_shards_per_run(missing=0, slots=0, runs_per_slot=4) == 1
    assert auto_shards_per_run(missing=1_000, slots=1, runs_per_slot=4) == 64
    assert auto_shards_per_run(missing=100, slots=1, runs_per_slot=4) == 25


def test_auto_reads_the_pool_and_the_missing_shards_of_the_instance(pg_instance) -> None:
    keys = [f"ds/hi/shard_{i:06d}" for i in range(100)]
    add_shard_partitions(pg_instance, keys)
    for key in keys[:20]:
        pg_instance.report_runless_asset_event(dg.AssetMaterialization(TOKENS_ASSET_KEY, partition=key))
    pg_instance.event_log_storage.set_concurrency_slots("gpu", 2)
    size = run_size(load_settings({"NEUCODEC_SHARDS_PER_RUN": "auto"}), pg_instance)
    assert size.shards_per_run == 10  # 80 missing / (2 slots x 4 runs per slot)
    assert "80 shards without tokens, 2 gpu slots" in size.why
    assert run_size(load_settings({"NEUCODEC_SHARDS_PER_RUN": "5"}), pg_instance).shards_per_run == 5
    # Without a pool limit yet, the slots the production coordinator will set (this host's CPU slot).
    pg_instance.event_log_storage.delete_concurrency_limit("gpu")
    assert run_size(load_settings({"NEUCODEC_SHARDS_PER_RUN": "auto"}), pg_instance).shards_per_run == 20
