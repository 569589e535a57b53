"""The progress charts: PNG objects in the bucket, linked from the materialization by URL (the event log is no
blob store: a refresh every ten minutes would add the images to it every time)."""

from __future__ import annotations

from collections.abc import Callable

from neucodec_assets.charts import figure_png, plt
from neucodec_assets.progress.compute import HISTORY_HOURS
from neucodec_assets.progress.summary import GroupSummary, ProgressSummary
from resources.bucket import Bucket


def progress_chart_png(summary: ProgressSummary) -> bytes:
    """Stacked bars per language: hours done, remaining (estimated) and in failed shards."""
    labels = list(summary.by_language) or ["(none)"]
    groups = [summary.by_language.get(label, GroupSummary()) for label in labels]
    done = [g.hours_done for g in groups]
    left = [g.hours_remaining_estimated for g in groups]
    failed = [g.hours_failed for g in groups]
    figure, axis = plt.subplots(figsize=(7, 0.35 * max(len(labels), 3) + 1.2))
    axis.barh(labels, done, color="#3b7dd8", label="done")
    axis.barh(labels, left, left=done, color="#c9d6ea", label="remaining")
    axis.barh(labels, failed, left=[d + r for d, r in zip(done, left)], color="#d8503b", label="failed shards")
    axis.set_xlabel("audio hours")
    axis.set_title("Encoding progress per language")
    axis.legend(loc="lower right", fontsize=8)
    return figure_png(figure)


def throughput_chart_png(summary: ProgressSummary) -> bytes:
    """Audio hours encoded in each wall hour over the last HISTORY_HOURS hours."""
    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.bar([t for t, _ in summary.hourly_audio_hours], [h for _, h in summary.hourly_audio_hours], width=1 / 24,
             align="edge", color="#3bb273")
    axis.set_ylabel("audio hours per wall hour")
    axis.set_title(f"Throughput, last {HISTORY_HOURS} hours (UTC)")
    figure.autofmt_xdate()
    return figure_png(figure)


CHARTS: dict[str, Callable[[ProgressSummary], bytes]] = {
    "progress_by_language": progress_chart_png, "throughput": throughput_chart_png}


def write_charts(bucket: Bucket, prefix: str, summary: ProgressSummary) -> dict[str, str]:
    """Each chart as `<prefix>/<name>.png`; name -> bucket key."""
    keys = {}
    for name, draw in CHARTS.items():
        keys[name] = f"{prefix}/{name}.png"
        bucket.put_bytes(keys[name], draw(summary))
    return keys
