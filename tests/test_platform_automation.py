"""The automation conditions as Dagster evaluates them (its own evaluator, on a real instance): shards found before
the automation sensor's first tick are encoded too, done shards are not, and pairs follow the tokens. (A real
`dagster-daemon` doing the same: tests/test_platform_backfills.py.)"""

from __future__ import annotations

import dagster as dg

from neucodec_assets.definitions import defs
from neucodec_assets.tokens.discovery import add_shard_partitions
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY

PAIRS = dg.AssetKey("sft_pairs")
KEYS = ["ds/hi/shard_000000", "ds/hi/shard_000001", "ds/ta/shard_000000"]


def test_shards_known_before_the_first_tick_are_requested_once(pg_instance) -> None:
    add_shard_partitions(pg_instance, KEYS)  # e.g. the whole bucket, discovered before automation first ran
    pg_instance.report_runless_asset_event(dg.AssetMaterialization(TOKENS_ASSET_KEY, partition=KEYS[0]))

    first = dg.evaluate_automation_conditions(defs=defs, instance=pg_instance)
    assert first.get_requested_partitions(TOKENS_ASSET_KEY) == set(KEYS[1:])  # not the one already done
    # Pairs: the done shard's (its tokens exist) and, in the same backfill after them, the others'.
    assert first.get_requested_partitions(PAIRS) == set(KEYS)

    # Once that backfill has landed tokens and pairs, nothing is asked again.
    for key in KEYS[1:]:
        pg_instance.report_runless_asset_event(dg.AssetMaterialization(TOKENS_ASSET_KEY, partition=key))
    for key in KEYS:
        pg_instance.report_runless_asset_event(dg.AssetMaterialization(PAIRS, partition=key))
    second = dg.evaluate_automation_conditions(defs=defs, instance=pg_instance, cursor=first.cursor)
    assert second.total_requested == 0

    # New tokens for one shard (re-encoded): its pairs follow, and only its.
    pg_instance.report_runless_asset_event(dg.AssetMaterialization(TOKENS_ASSET_KEY, partition=KEYS[2]))
    third = dg.evaluate_automation_conditions(defs=defs, instance=pg_instance, cursor=second.cursor)
    assert third.get_requested_partitions(TOKENS_ASSET_KEY) == set()
    assert third.get_requested_partitions(PAIRS) == {KEYS[2]}
