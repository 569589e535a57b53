"""New audio becomes tokens and SFT records without anyone acting: Dagster's declarative automation.

The discovery sensor adds shards as partitions; the automation sensor below then requests, as backfills (so the
backfill policies group shards into runs, one model load per run):
- `neucodec_tokens` for every shard without tokens that is not in flight and whose last try did not fail (a failed
  shard is not retried in a loop: fix it, then backfill it);
- `sft_pairs` for shards whose tokens exist and that have no pairs yet, or whose tokens were materialized again;
- `sft_dataset` at most once per ``NEUCODEC_SFT_DATASET_CRON`` period (default hourly), when pairs changed and no
  `sft_pairs` run is in flight (a build does not begin on shards whose records and index are half rewritten).

``NEUCODEC_AUTOMATION=off`` starts the sensor stopped, for teams that backfill by hand; the sensor's toggle in the UI
does the same at run time. Each requested run carries the automation evaluation that asked for it (UI: Automation).
"""

from __future__ import annotations

import dagster as dg

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
        description="Requests neucodec_tokens for new shards, sft_pairs after tokens, and sft_dataset when pairs "
        f"changed (at most once per {settings.sft_dataset_cron}). Off: NEUCODEC_AUTOMATION=off, or stop it here.",
    )
