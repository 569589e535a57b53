"""The fleet's progress (`encoding_progress`, `neucodec-platform status`) and its alerts (`neucodec_alert_sensor`).

records.py (the rows a pass keeps) <- collect.py (reading the instance, paged, and the bucket) and cache.py (what
earlier passes read); compute.py (the arithmetic) -> summary.py (the typed summary and its one reader); render.py
(text, markdown, plottable numbers) and charts.py (PNGs in the bucket); refresh.py (one pass); asset.py.
"""

import dagster as dg

from gpu_executor.settings import load_settings

PROGRESS_ASSET_KEY = dg.AssetKey("encoding_progress")


def progress_prefix() -> str:
    """Where encoding_progress writes in the bucket: summary, charts, cache (NEUCODEC_PROGRESS_PREFIX), read now."""
    return load_settings().progress_prefix.strip("/")
