"""New audio becomes tokens and SFT records without anyone acting: Dagster's declarative automation.

The discovery sensor adds shards as partitions; the automation sensor below then requests, as backfills (so the
backfill policies group shards into runs, one model load per run):
- `neucodec_tokens` for every shard without tokens that is not in flight and whose last try did not fail (a failed
  shard is not retried in a loop: fix it, then backfill it);
- `sft_pairs` for shards whose tokens exist and that have no pairs yet, or whose tokens were materialized again;
- `sft_dataset` at most once per ``NEUCODEC_SFT_DATASET_CRON`` period (default hourly), when pairs changed and no
  `sft_pairs` run is in flight (a build does not begin on shards whose records and index are half rewritten).

A tick asks for at most what keeps ``NEUCODEC_AUTOMATION_RUNS_PER_SLOT`` tokens runs per `gpu` slot in flight
(`InFlightCap`): the first tick after a 100,000-shard discovery requests a few hundred runs' worth, not one
100,000-partition backfill, and later ticks top the queue up as runs finish. That condition is Python the daemon
cannot deserialize, so the sensor is evaluated in the code server (``use_user_code_server``).

``NEUCODEC_AUTOMATION=off`` starts the sensor stopped, for teams that backfill by hand; the sensor's toggle in the UI
does the same at run time. Each requested run carries the automation evaluation that asked for it (UI: Automation).
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from gpu_executor.launch.coordinator import gpu_pool_slots
from gpu_executor.settings import Settings, default_of
from neucodec_assets.progress import PROGRESS_ASSET_KEY

SENSOR_NAME = "neucodec_automation"


def _missing_not_failed() -> dg.AutomationCondition:
    """Never materialized, not being materialized, and its last try did not fail. Unlike `on_missing` (only
    partitions added after the condition's first evaluation), this also catches shards the discovery sensor added
    before the automation sensor first ticked, such as a whole bucket on the first start."""
    return (
        dg.AutomationCondition.missing()
        & ~dg.AutomationCondition.in_progress()
        & ~dg.AutomationCondition.execution_failed()
    )


def tokens_condition() -> dg.AutomationCondition:
    """Encode every shard that has no tokens yet, once: a failed shard waits for a backfill by hand."""
    return _missing_not_failed().with_label("shard not encoded yet")


class InFlightCap(dg.AutomationCondition):
    """True for the operand's partitions, but only as many as fit beside those already in flight (running, queued
    or in a backfill in progress) under ``runs_per_slot`` x the `gpu` pool's slots x ``shards_per_run``; the first
    discovered first. The pool's slots are read at each tick (the limit the queue keeps)."""

    def __init__(self, operand: dg.AutomationCondition, shards_per_run: int, runs_per_slot: int) -> None:
        self.operand = operand
        self.shards_per_run = shards_per_run
        self.runs_per_slot = runs_per_slot
        self.in_flight = dg.AutomationCondition.in_progress()

    @property
    def name(self) -> str:
        return "in_flight_cap"

    @property
    def description(self) -> str:
        return (f"at most {self.runs_per_slot} runs of {self.shards_per_run} shards per gpu slot in flight, "
                "the rest on later ticks")

    @property
    def children(self) -> Sequence[dg.AutomationCondition]:
        return [self.operand, self.in_flight]

    def cap(self, instance: dg.DagsterInstance) -> int:
        """Partitions in flight at most."""
        return self.runs_per_slot * (gpu_pool_slots(instance) or 1) * self.shards_per_run

    async def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        wanted = await context.for_child_condition(self.operand, [0], context.candidate_subset).evaluate_async()
        flying = await context.for_child_condition(self.in_flight, [1], context.candidate_subset).evaluate_async()
        room = max(0, self.cap(context.asset_graph_view.instance) - flying.true_subset.size)
        true = wanted.true_subset
        if true.size > room:
            # The first in the definition's order (discovery order for dynamic partitions): a subset in few key
            # ranges, which Dagster's cursor and backfill code handle range by range.
            wanted_keys = true.expensively_compute_partition_keys()
            first = [k for k in partition_order(context) if k in wanted_keys][:room]
            true = true.compute_intersection_with_partition_keys(set(first))
        return dg.AutomationResult(context, true, child_results=[wanted, flying])


def partition_order(context: dg.AutomationContext) -> list[str]:
    """The asset's partition keys in its definition's order (dynamic: as added, read from the instance)."""
    definition = context.partitions_def
    if isinstance(definition, dg.DynamicPartitionsDefinition) and definition.name:
        return list(context.asset_graph_view.instance.get_dynamic_partitions(definition.name))
    return list(definition.get_partition_keys()) if definition is not None else []


def capped_tokens_condition(shards_per_run: int, runs_per_slot: int) -> dg.AutomationCondition:
    """The tokens condition as the automation sensor evaluates it: missing shards, in batches the fleet drains."""
    return InFlightCap(tokens_condition(), shards_per_run, runs_per_slot)


def pairs_condition() -> dg.AutomationCondition:
    """Pair a shard whose tokens exist and that has no pairs yet, and again whenever its tokens are materialized."""
    return (
        (_missing_not_failed() | dg.AutomationCondition.any_deps_updated().since_last_handled())
        & ~dg.AutomationCondition.any_deps_missing()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("tokens new or updated")


def dataset_condition(cron: str = default_of("sft_dataset_cron")) -> dg.AutomationCondition:
    """Rebuild the dataset once per cron period, as soon as any shard's pairs changed since the last build and no
    shard is being paired: a tick that passes while pairs are in flight waits for them."""
    progress = dg.AssetSelection.assets(PROGRESS_ASSET_KEY)
    pairs_updated = dg.AutomationCondition.any_deps_updated().ignore(progress)
    pairs_in_flight = dg.AutomationCondition.any_deps_in_progress().ignore(progress)
    return (
        dg.AutomationCondition.cron_tick_passed(cron).since_last_handled()
        & pairs_updated.since_last_handled()
        & ~pairs_in_flight
        & ~dg.AutomationCondition.in_progress()
    ).with_label(f"pairs changed and none in flight, at most once per {cron}")


def automation_sensor(settings: Settings) -> dg.AutomationConditionSensorDefinition:
    """Built when the code location loads: NEUCODEC_AUTOMATION and its interval shape the definition."""
    return dg.AutomationConditionSensorDefinition(
        SENSOR_NAME,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING if settings.automation else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=settings.automation_interval_seconds,
        emit_backfills=True,
        use_user_code_server=True,  # InFlightCap is Python: evaluated where the definitions live
        description="Requests neucodec_tokens for new shards, sft_pairs after tokens, and sft_dataset when pairs "
        f"changed (at most once per {settings.sft_dataset_cron}). Off: NEUCODEC_AUTOMATION=off, or stop it here.",
    )
