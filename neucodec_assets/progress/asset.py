"""`encoding_progress`: the fleet's progress, rate, ETA and cost as an asset whose metadata the UI plots over time.

It is refreshed by `encoding_progress_schedule` (NEUCODEC_PROGRESS_CRON, default every 10 minutes) rather than by an
automation condition, so that it keeps reporting when the automation sensor is off (NEUCODEC_AUTOMATION=off), and by
`encoding_progress_after_backfills` when a backfill of `neucodec_tokens` ends (one small query per minute). The pass is
neucodec_assets/progress/refresh.py; its summary is recorded as metadata `summary` and as progress.json in the bucket
(summary.py reads it back), and `neucodec-platform status` prints the same summary.
"""

# No `from __future__ import annotations`: Dagster reads the resource types from the runtime annotations.

import time

import dagster as dg

from gpu_executor.settings import default_of
from neucodec_assets.progress import PROGRESS_ASSET_KEY, progress_prefix
from neucodec_assets.progress.charts import write_charts
from neucodec_assets.progress.refresh import refresh
from neucodec_assets.progress.render import format_markdown, numeric_metadata
from neucodec_assets.progress.summary import SUMMARY_METADATA_KEY, write_summary
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from resources.dagster_resources import BucketResource

DEFAULT_CRON = default_of("progress_cron")


@dg.asset(
    key=PROGRESS_ASSET_KEY,
    # Lineage, and order in a backfill of every asset (the demo's): after the shards' tokens. It reads their
    # records, not their files.
    deps=[TOKENS_ASSET_KEY],
    group_name="neucodec",
    kinds={"python"},
    description="Shards done / failed / in flight / pending, hours done and remaining, tokens, failed segments, "
    "throughput, ETA and GPU-hours per language, per dataset and in total, read from Dagster's own records and "
    "the shards' metadata.parquet. The summary (progress.json) and the charts also go to "
    "`<NEUCODEC_PROGRESS_PREFIX>/` in the bucket.",
)
def encoding_progress(context: dg.AssetExecutionContext, bucket: BucketResource) -> dg.MaterializeResult:
    store = bucket.open()
    prefix = progress_prefix()
    started = time.perf_counter()
    summary = refresh(context.instance, store, prefix, save=True, log=context.log.info)
    report_key = write_summary(store, prefix, summary)

    metadata: dict[str, dg.RawMetadataValue] = dict(numeric_metadata(summary))
    metadata["by_language"] = dg.MetadataValue.md(
        format_markdown([("total", summary.total), *summary.by_language.items()]))
    metadata["by_dataset"] = dg.MetadataValue.md(format_markdown(list(summary.by_dataset.items())))
    metadata["failed_segments_by_reason"] = dg.MetadataValue.json(summary.total.failed_by_reason)
    for name, key in write_charts(store, prefix, summary).items():
        metadata[f"{name}_chart"] = dg.MetadataValue.url(store.url_of(key))
        metadata[f"{name}_chart_key"] = key
    metadata["report_key"] = report_key
    metadata["report_url"] = dg.MetadataValue.url(store.url_of(report_key))
    if summary.notes:
        metadata["notes"] = dg.MetadataValue.md("\n".join(f"- {n}" for n in summary.notes))
    metadata[SUMMARY_METADATA_KEY] = dg.MetadataValue.json(summary.to_json())
    metadata["seconds"] = dg.MetadataValue.float(round(time.perf_counter() - started, 3))
    return dg.MaterializeResult(metadata=metadata)


encoding_progress_job = dg.define_asset_job(
    name="encoding_progress_job", selection=dg.AssetSelection.assets(PROGRESS_ASSET_KEY),
    description="Refresh encoding_progress (no GPU).",
)

def progress_schedule(cron: str = DEFAULT_CRON) -> dg.ScheduleDefinition:
    """The refresh schedule; its cron (NEUCODEC_PROGRESS_CRON) is set when the code location loads."""
    return dg.ScheduleDefinition(
        name="encoding_progress_schedule",
        job=encoding_progress_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Refreshes encoding_progress ({cron}; NEUCODEC_PROGRESS_CRON).",
    )


encoding_progress_schedule = progress_schedule()


BACKFILLS_SEEN = 20


@dg.sensor(
    name="encoding_progress_after_backfills",
    job=encoding_progress_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Refreshes encoding_progress when a backfill of neucodec_tokens ends, so the numbers do not wait "
    "for the next scheduled refresh.",
)
def encoding_progress_after_backfills(context: dg.SensorEvaluationContext):
    """The cursor is the end time of the last backfill seen; the first tick only sets it (no refresh on deploy)."""
    from gpu_executor.launch.dagster_internals import BulkActionStatus

    ended = [b for b in context.instance.get_backfills(limit=BACKFILLS_SEEN)
             if b.status != BulkActionStatus.REQUESTED and b.backfill_end_timestamp
             and TOKENS_ASSET_KEY in (b.asset_selection or ())]
    latest = max((b.backfill_end_timestamp for b in ended), default=0.0)
    if context.cursor is None:
        context.update_cursor(str(latest))
        return dg.SkipReason("first tick: remembering the latest backfill end")
    new = [b for b in ended if b.backfill_end_timestamp > float(context.cursor)]
    if not new:
        return dg.SkipReason("no backfill of neucodec_tokens ended since the last tick")
    context.update_cursor(str(latest))
    return dg.RunRequest(run_key=f"progress-after-{max(new, key=lambda b: b.backfill_end_timestamp).backfill_id}",
                         tags={"neucodec/progress_after_backfills": ",".join(b.backfill_id for b in new)})
