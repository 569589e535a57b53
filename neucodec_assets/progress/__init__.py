"""The fleet's progress (`encoding_progress`, `neucodec-platform status`) and its alerts (`neucodec_alert_sensor`)."""

import dagster as dg

PROGRESS_ASSET_KEY = dg.AssetKey("encoding_progress")
