"""A ProgressSummary for people and for the UI: the terminal table of `neucodec-platform status`, markdown tables,
and the stable numeric metadata keys whose history the UI plots."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from neucodec_assets.progress.records import DONE, FAILED, IN_FLIGHT, PENDING, STATES, UNKNOWN
from neucodec_assets.progress.summary import GroupSummary, ProgressSummary

TABLE_HEADER = ("scope", "done", "failed", "in flight", "pending", "hours done", "hours left", "tokens",
                "failed segs", "h/hour", "ETA")


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds <= 0:
        return "done"
    if seconds < 60:
        return "< 1 min"
    minutes = int(round(seconds / 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _scopes(summary: ProgressSummary) -> list[tuple[str, GroupSummary]]:
    """(label, group) of the total, each language and each dataset, in the table's order."""
    return ([("total", summary.total)] + [(f"language {k}", v) for k, v in summary.by_language.items()]
            + [(f"dataset {k}", v) for k, v in summary.by_dataset.items()])


def _cells(name: str, group: GroupSummary) -> tuple[str, ...]:
    s = group.shards
    left = f"{group.hours_remaining_estimated:,.2f}" + ("~" if group.shards_without_duration else "")
    return (name, f"{s[DONE]:,}", f"{s[FAILED]:,}", f"{s[IN_FLIGHT]:,}", f"{s[PENDING]:,}",
            f"{group.hours_done:,.2f}", left, f"{group.tokens:,}", f"{group.failed_segments:,}",
            _rate(group.throughput_hours_per_hour), format_duration(group.eta_seconds))


def _footer(summary: ProgressSummary) -> list[str]:
    w = summary.throughput
    span = w.window_hours * 3600
    lines = [f"throughput over the last {format_duration(span) if span >= 60 else f'{span:.0f} s'}: "
             f"{_rate(w.audio_hours_per_wall_hour)} audio hours per wall hour, {_rate(w.audio_hours_per_gpu_hour)} "
             f"per GPU-hour ({w.gpu_hours:.2f} GPU-hours in the window; runs running now: {summary.runs_active})"]
    cost = ""
    if summary.cost is not None:
        cost = f"; cost {summary.cost:,.2f} at {summary.gpu_hour_price:g} per GPU-hour"
        if summary.cost_per_1000_hours is not None:
            cost += f" ({summary.cost_per_1000_hours:,.2f} per 1,000 audio hours)"
    lines.append(f"GPU-hours used: {summary.gpu_hours:,.2f}{cost}")
    reasons = summary.total.failed_by_reason
    if reasons:
        lines.append("failed segments by reason: " + ", ".join(f"{k} {v:,}" for k, v in
                                                               sorted(reasons.items(), key=lambda kv: -kv[1])))
    if any(g.shards_without_duration for _, g in _scopes(summary)):
        lines.append("~: includes shards without metadata durations, estimated at the mean shard of their language")
    for label, group in sorted(summary.by_language.items()):
        if group.roundtrip_means:
            random = " (random weights: meaningless)" if group.roundtrip_random else ""
            lines.append(f"round trip {label}{random}: " + ", ".join(
                f"{name} {value:.3f}" for name, value in group.roundtrip_means.items()))
    lines.extend(f"note: {note}" for note in summary.notes)
    return lines


def format_text(summary: ProgressSummary) -> str:
    """The terminal table of `neucodec-platform status`."""
    rows = [TABLE_HEADER] + [_cells(name, group) for name, group in _scopes(summary)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    lines = [f"encoding progress at {summary.generated_at:%Y-%m-%d %H:%M:%S} UTC"]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines + _footer(summary))


def format_markdown(rows: Sequence[tuple[str, GroupSummary]]) -> str:
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "|".join("---" for _ in TABLE_HEADER) + "|"]
    lines += ["| " + " | ".join(_cells(name, group)) + " |" for name, group in rows]
    return "\n".join(lines)


def _key(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or UNKNOWN


def numeric_metadata(summary: ProgressSummary) -> dict[str, dg.MetadataValue]:
    """Stable numeric keys (`hours_done`, `hours_done/hi`, ...) so the UI plots each one's history."""
    meta: dict[str, dg.MetadataValue] = {}

    def put(axis: str, group: GroupSummary, suffix: str = "") -> None:
        for state in STATES:
            meta[f"shards_{state}{suffix}"] = dg.MetadataValue.int(group.shards[state])
        meta[f"hours_done{suffix}"] = dg.MetadataValue.float(round(group.hours_done, 4))
        meta[f"hours_remaining{suffix}"] = dg.MetadataValue.float(round(group.hours_remaining_estimated, 4))
        if axis != "dataset":
            meta[f"tokens{suffix}"] = dg.MetadataValue.int(group.tokens)
            meta[f"failed_segments{suffix}"] = dg.MetadataValue.int(group.failed_segments)
            rate = group.throughput_hours_per_hour or 0.0
            meta[f"audio_hours_per_hour{suffix}"] = dg.MetadataValue.float(round(rate, 4))
            if group.eta_seconds is not None:
                meta[f"eta_hours{suffix}"] = dg.MetadataValue.float(round(group.eta_seconds / 3600, 4))
            for name, value in group.roundtrip_means.items():
                meta[f"roundtrip_{name}{suffix}"] = dg.MetadataValue.float(round(value, 4))
            if group.roundtrip_means:
                meta[f"roundtrip_random_weights{suffix}"] = dg.MetadataValue.bool(group.roundtrip_random)
                meta[f"roundtrip_segments{suffix}"] = dg.MetadataValue.int(group.roundtrip_sampled)

    put("total", summary.total)
    for label, group in summary.by_language.items():
        put("language", group, f"/{_key(label)}")
    for label, group in summary.by_dataset.items():
        put("dataset", group, f"/dataset/{_key(label)}")
    meta["audio_hours_per_gpu_hour"] = dg.MetadataValue.float(
        round(summary.throughput.audio_hours_per_gpu_hour or 0.0, 4))
    meta["gpu_hours"] = dg.MetadataValue.float(round(summary.gpu_hours, 4))
    meta["runs_active"] = dg.MetadataValue.int(summary.runs_active)
    if summary.cost is not None:
        meta["cost"] = dg.MetadataValue.float(round(summary.cost, 4))
        if summary.cost_per_1000_hours is not None:
            meta["cost_per_1000_hours"] = dg.MetadataValue.float(round(summary.cost_per_1000_hours, 4))
    reads = summary.reads
    for name, value in (("materializations_read", reads.materializations), ("run_records_read", reads.run_records),
                        ("metadata_files_read", reads.metadata_files),
                        ("metadata_read_failures", reads.metadata_failures)):
        meta[name] = dg.MetadataValue.int(value)
    return meta
