"""`neucodec_alert_sensor`: a failed run posts a JSON message to NEUCODEC_ALERT_WEBHOOK_URL (Slack incoming webhooks
and most chat tools accept it: a `text` field, plus structured fields for machines).

Off when the variable is unset: the sensor starts STOPPED and skips. The URL carries its own secret (Slack's does),
so it is read from the environment at each post and never logged or put into an error message.
"""

# No `from __future__ import annotations`: Dagster reads the sensor function's annotations.

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence

import dagster as dg

from gpu_executor.launch.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)
from gpu_executor.launch.names import GPU_TAG, HOST_TAG
from gpu_executor.settings import Settings, load_settings
from neucodec_assets.tokens.partitions import shards_partitions

SENSOR_NAME = "neucodec_alert_sensor"
WEBHOOK_ENV = Settings.env_names("alert_webhook_url")[0]
POST_ATTEMPTS = 3
POST_TIMEOUT_SECONDS = 10
MAX_SHARDS_IN_TEXT = 10
MAX_ERROR_CHARS = 1500


def webhook_url() -> str | None:
    """NEUCODEC_ALERT_WEBHOOK_URL, read per tick; a secret, never logged."""
    return load_settings().secret("alert_webhook_url")


def run_shard_keys(run: dg.DagsterRun, all_keys: Sequence[str]) -> list[str]:
    """The shards a run was given, from the partition tags Dagster put on it (one key, or a range of keys)."""
    if PARTITION_NAME_TAG in run.tags:
        return [run.tags[PARTITION_NAME_TAG]]
    start, end = run.tags.get(ASSET_PARTITION_RANGE_START_TAG), run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start is None or end is None:
        return []
    if start in all_keys and end in all_keys:
        return list(all_keys[all_keys.index(start): all_keys.index(end) + 1])
    return [start, end]


def _failed_shards(step_failures: Sequence[dg.DagsterEvent]) -> list[dict[str, str]]:
    """The `failed_shards` table the tokens asset attaches to its Failure (shard and error per failed shard)."""
    rows: list[dict[str, str]] = []
    for event in step_failures:
        data = event.step_failure_data
        metadata = (data.user_failure_data.metadata if data and data.user_failure_data else None) or {}
        table = metadata.get("failed_shards")
        for record in getattr(table, "records", None) or []:
            rows.append({k: str(v) for k, v in record.data.items()})
    return rows


def _error_text(context: dg.RunFailureSensorContext, step_failures: Sequence[dg.DagsterEvent]) -> str:
    for event in step_failures:
        data = event.step_failure_data
        if data is not None and data.user_failure_data is not None and data.user_failure_data.description:
            return f"{event.step_key}: {data.user_failure_data.description.strip()}"  # a dg.Failure's own words
        if data is not None and data.error is not None:
            return f"{event.step_key}: {data.error.message.strip()}"
    return (context.failure_event.message or "run failed").strip()


def alert_message(context: dg.RunFailureSensorContext) -> dict:
    """The JSON body: Slack's `text`, and the same facts as fields."""
    run = context.dagster_run
    step_failures = list(context.get_step_failure_events())
    shards = run_shard_keys(run, context.instance.get_dynamic_partitions(shards_partitions.name))
    failed = _failed_shards(step_failures)
    error = _error_text(context, step_failures)[:MAX_ERROR_CHARS]
    named = [row.get("shard", "") for row in failed] or shards
    listed = ", ".join(named[:MAX_SHARDS_IN_TEXT]) + (f" and {len(named) - MAX_SHARDS_IN_TEXT} more"
                                                      if len(named) > MAX_SHARDS_IN_TEXT else "")
    text = f"neucodec run {run.run_id} ({run.job_name}) failed"
    if listed:
        text += f"; {'failed shards' if failed else 'shards'}: {listed}"
    text += f"\n{error}"
    return {
        "text": text,
        "run_id": run.run_id,
        "job": run.job_name,
        "status": run.status.value,
        "shards": shards,
        "failed_shards": failed,
        "error": error,
        "backfill": run.tags.get("dagster/backfill"),
        "gpu": run.tags.get(GPU_TAG),
        "host": run.tags.get(HOST_TAG),
    }


class WebhookError(RuntimeError):
    """A post that did not succeed; its text never contains the URL."""


def post_json(url: str, body: dict, *, attempts: int = POST_ATTEMPTS, timeout: float = POST_TIMEOUT_SECONDS) -> int:
    """POST ``body`` as JSON; retries a few times; returns the HTTP status. Errors name the status or the
    exception type, never the URL."""
    data = json.dumps(body).encode()
    last = ""
    for attempt in range(attempts):
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - configured https URL
                return response.status
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
            if 400 <= exc.code < 500 and exc.code != 429:
                break
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            last = type(reason).__name__
        if attempt + 1 < attempts:
            time.sleep(min(2 ** attempt, 4))
    raise WebhookError(f"webhook post failed after {attempt + 1} attempts: {last}")


def post_alert(context: dg.RunFailureSensorContext):
    """One failed run: post its message to the webhook read now (a tick without a URL skips)."""
    url = webhook_url()
    if not url:
        return dg.SkipReason(f"{WEBHOOK_ENV} is not set: no alert sent")
    body = alert_message(context)
    try:
        status = post_json(url, body)
    except WebhookError as exc:
        # Logged and skipped: a webhook that is down must not stop later runs' alerts.
        context.log.error(f"alert for run {body['run_id']} not delivered: {exc}")
        return dg.SkipReason(f"alert for run {body['run_id']} not delivered: {exc}")
    context.log.info(f"alert for run {body['run_id']} posted (HTTP {status})")
    return None


def alert_sensor(webhook_set: bool = False) -> dg.SensorDefinition:
    """The sensor; it starts on when the code location loads with NEUCODEC_ALERT_WEBHOOK_URL set."""
    return dg.run_failure_sensor(
        name=SENSOR_NAME,
        description=f"Posts a JSON message (Slack-compatible `text`, run id, job, shards, error) for every failed "
        f"run to {WEBHOOK_ENV}. Off while the variable is unset.",
        default_status=dg.DefaultSensorStatus.RUNNING if webhook_set else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=30,
    )(post_alert)


neucodec_alert_sensor = alert_sensor()
