"""The automation conditions as Dagster evaluates them (its own evaluator, on a real instance): shards found before
the automation sensor's first tick are encoded too, done shards are not, and pairs follow the tokens. (A real
`dagster-daemon` doing the same: tests/test_platform_backfills.py.) The dataset is rebuilt once per cron period, never
while a shard is being paired. A tick asks for no more than the GPU pool drains (issue 21)."""

from __future__ import annotations

import datetime

import dagster as dg

from gpu_executor.settings import load_settings
from neucodec_assets.definitions import build_definitions, defs
from neucodec_assets.tokens.discovery import add_shard_partitions
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from tests.fixtures.platform import started_tokens_run

PAIRS = dg.AssetKey("sft_pairs")
DATASET = dg.AssetKey("sft_dataset")
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


def _pairs_run_in_flight(instance: dg.DagsterInstance, key: str) -> dg.DagsterRun:
    """A started sft_pairs run for one shard, created as the queue creates it (Dagster records the planned
    materialization of the partition)."""
    job = defs.resolve_implicit_job_def_def_for_assets([PAIRS])
    run = instance.create_run_for_job(job_def=job, tags={"dagster/partition": key}, asset_selection=frozenset({PAIRS}))
    instance.report_dagster_event(dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, job_name=run.job_name),
                                  run_id=run.run_id)
    return instance.get_run_by_id(run.run_id)


def test_the_dataset_waits_for_pairs_in_flight(pg_instance) -> None:
    add_shard_partitions(pg_instance, KEYS)
    for key in KEYS:
        pg_instance.report_runless_asset_event(dg.AssetMaterialization(TOKENS_ASSET_KEY, partition=key))
        pg_instance.report_runless_asset_event(dg.AssetMaterialization(PAIRS, partition=key))
    start = datetime.datetime.now(datetime.timezone.utc)
    first = dg.evaluate_automation_conditions(defs=defs, instance=pg_instance, evaluation_time=start)

    # An hour later pairs have changed, and one shard is being paired again: the dataset's tick waits.
    pg_instance.report_runless_asset_event(dg.AssetMaterialization(PAIRS, partition=KEYS[0]))
    run = _pairs_run_in_flight(pg_instance, KEYS[1])
    later = start + datetime.timedelta(hours=1, minutes=1)
    waiting = dg.evaluate_automation_conditions(defs=defs, instance=pg_instance, cursor=first.cursor,
                                                evaluation_time=later)
    assert waiting.get_num_requested(DATASET) == 0
    assert waiting.get_num_requested(PAIRS) == 0  # the shard in flight is not asked twice

    # Once that run has ended, the same tick's rebuild starts.
    pg_instance.report_run_canceled(run, "terminated")  # what the launcher writes when a run is terminated
    ended = dg.evaluate_automation_conditions(defs=defs, instance=pg_instance, cursor=waiting.cursor,
                                              evaluation_time=later + datetime.timedelta(minutes=1))
    assert ended.get_num_requested(DATASET) == 1


def test_a_tick_asks_for_what_the_pool_drains_and_tops_it_up(pg_instance) -> None:
    """100 shards without tokens, a 2-slot pool, 2 runs per slot of 3 shards: the first tick asks for 12 shards
    (the first discovered), not 100; with those in flight the next tick asks for none; as 4 end, for the next 4."""
    pg_instance.event_log_storage.set_concurrency_slots("gpu", 2)  # the limit the queue keeps
    keys = sorted(f"ds/hi/shard_{i:06d}" for i in range(100))
    add_shard_partitions(pg_instance, keys)
    capped = build_definitions(load_settings({"NEUCODEC_SHARDS_PER_RUN": "3",
                                              "NEUCODEC_AUTOMATION_RUNS_PER_SLOT": "2"}), pg_instance)

    first = dg.evaluate_automation_conditions(defs=capped, instance=pg_instance)
    assert first.get_requested_partitions(TOKENS_ASSET_KEY) == set(keys[:12])
    assert first.get_requested_partitions(PAIRS) == set(keys[:12])  # pairs follow only the shards asked for

    runs = {key: started_tokens_run(pg_instance, key) for key in keys[:12]}  # the sensor's backfill, running
    second = dg.evaluate_automation_conditions(defs=capped, instance=pg_instance, cursor=first.cursor)
    assert second.get_requested_partitions(TOKENS_ASSET_KEY) == set()

    for key in keys[:4]:
        pg_instance.report_runless_asset_event(dg.AssetMaterialization(TOKENS_ASSET_KEY, partition=key))
        pg_instance.report_dagster_event(dg.DagsterEvent(dg.DagsterEventType.RUN_SUCCESS.value,
                                                         job_name=runs[key].job_name), run_id=runs[key].run_id)
    third = dg.evaluate_automation_conditions(defs=capped, instance=pg_instance, cursor=second.cursor)
    assert third.get_requested_partitions(TOKENS_ASSET_KEY) == set(keys[12:16])
