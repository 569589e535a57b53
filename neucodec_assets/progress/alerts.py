"""`neucodec_alert_sensor`: every failed run of the instance is posted to NEUCODEC_ALERT_WEBHOOK_URL, as one message
while few fail and as one digest when many do. A post that fails stays pending in the sensor's cursor and is retried
on later ticks, with backoff, until the webhook takes it (`alert_outbox`).

Off when the variable is unset: the sensor starts STOPPED, and a running one reads no failure until the variable is
set (the failures wait in the event log). The URL carries its own secret (Slack's does), so it is read from the
environment at each tick and never logged or put into an error message.
"""

# No `from __future__ import annotations`: Dagster reads the sensor function's annotations.

import functools

import dagster as dg

from gpu_executor.settings import Settings, load_settings
from neucodec_assets.progress.alert_messages import alert_message
from neucodec_assets.progress.alert_outbox import TICK_SECONDS, AlertOutbox
from neucodec_assets.progress.webhook import post_json
from neucodec_assets.tokens.partitions import shards_partitions

SENSOR_NAME = "neucodec_alert_sensor"
WEBHOOK_ENV = Settings.env_names("alert_webhook_url")[0]
#: Run failures read per tick; a longer backlog is read over the next ticks (its digest waits until it is read).
FAILURES_PER_TICK = 200


def _latest_failure_id(instance: dg.DagsterInstance) -> int:
    records = instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=1).records
    return records[0].storage_id if records else 0


def _new_failures(instance: dg.DagsterInstance, after: int) -> list[dg.EventLogRecord]:
    return list(instance.fetch_run_status_changes(
        dg.RunStatusChangeRecordsFilter(event_type=dg.DagsterEventType.RUN_FAILURE, after_storage_id=after),
        limit=FAILURES_PER_TICK, ascending=True).records)


def _alerts(instance: dg.DagsterInstance, failures: list[dg.EventLogRecord], ui_url: str | None) -> list[dict]:
    """The message of each failed run (a run deleted since it failed has none)."""
    run_ids = [record.event_log_entry.run_id for record in failures]
    runs = {run.run_id: run for run in instance.get_runs(filters=dg.RunsFilter(run_ids=run_ids))} if run_ids else {}
    shard_keys = functools.cache(lambda: instance.get_dynamic_partitions(shards_partitions.name))
    alerts = []
    for record in failures:
        run = runs.get(record.event_log_entry.run_id)
        if run is None:
            continue
        steps = [e.dagster_event for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
        alerts.append(alert_message(run, record.event_log_entry, steps, shard_keys, ui_url))
    return alerts


def deliver_alerts(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """One tick: read the run failures since the cursor, post what is due, keep the rest in the cursor."""
    instance = context.instance
    if context.cursor is None:  # the first tick: failures from now on (as Dagster's run-failure sensors do)
        outbox = AlertOutbox(after=_latest_failure_id(instance))
        return dg.SensorResult(skip_reason="started: runs that fail from now on are alerted",
                               cursor=outbox.to_cursor())
    outbox = AlertOutbox.from_cursor(context.cursor)
    settings = load_settings()
    url = settings.secret("alert_webhook_url")
    if not url:
        waiting = f" ({outbox.waiting} alerts pending)" if outbox.waiting else ""
        return dg.SensorResult(skip_reason=f"{WEBHOOK_ENV} is not set: no alert sent{waiting}", cursor=context.cursor)
    outbox.begin_tick()
    failures = _new_failures(instance, outbox.after)
    outbox.add(_alerts(instance, failures, settings.ui_url))
    if failures:
        outbox.after = failures[-1].storage_id
    summary = outbox.deliver(lambda body: post_json(url, body), settings.ui_url,
                             reading_backlog=len(failures) == FAILURES_PER_TICK)
    (context.log.warning if outbox.failed_posts else context.log.info)(summary)
    return dg.SensorResult(skip_reason=summary, cursor=outbox.to_cursor())


def alert_sensor(webhook_set: bool = False) -> dg.SensorDefinition:
    """The sensor; it starts on when the code location loads with NEUCODEC_ALERT_WEBHOOK_URL set."""
    return dg.sensor(
        name=SENSOR_NAME,
        description=f"Posts every failed run to {WEBHOOK_ENV} (Slack-compatible JSON: `text`, run id, job, shards, "
        "error), one digest when many fail at once; retries failed posts on later ticks. Off while the variable is "
        "unset.",
        default_status=dg.DefaultSensorStatus.RUNNING if webhook_set else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=TICK_SECONDS,
    )(deliver_alerts)


neucodec_alert_sensor = alert_sensor()
