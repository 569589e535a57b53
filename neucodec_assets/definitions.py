"""The code location: `dagster dev -w workspace.yaml`, `dagster asset materialize -m neucodec_assets.definitions`.

Resources read their settings from NEUCODEC_* environment variables when a run starts (see
resources/dagster_resources.py). Runs execute in one process: a run's shards share one loaded model, and the GPU
run launcher's CUDA_VISIBLE_DEVICES applies to the process that encodes.
"""

from __future__ import annotations

import dagster as dg

from neucodec_assets.alerts import neucodec_alert_sensor
from neucodec_assets.automation import automation_sensor
from neucodec_assets.progress_asset import (
    encoding_progress,
    encoding_progress_after_backfills,
    encoding_progress_job,
    encoding_progress_schedule,
)
from neucodec_assets.sft import SftResource, sft_assets
from neucodec_assets.tokens.asset import neucodec_tokens
from neucodec_assets.tokens.discovery_sensor import shard_discovery_sensor
from neucodec_assets.tokens.job import neucodec_tokens_job
from resources.dagster_resources import BucketResource, EncoderResource

defs = dg.Definitions(
    assets=[neucodec_tokens, *sft_assets, encoding_progress],
    jobs=[neucodec_tokens_job, encoding_progress_job],
    schedules=[encoding_progress_schedule],
    sensors=[shard_discovery_sensor, automation_sensor(), neucodec_alert_sensor,
             encoding_progress_after_backfills],
    resources={"bucket": BucketResource(), "encoder": EncoderResource(), "sft": SftResource()},
    executor=dg.in_process_executor,
)
