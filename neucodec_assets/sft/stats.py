"""Totals a training team reads first: segments, hours and tokens per language, dataset and split."""

from __future__ import annotations

import polars as pl


def _aggregations(frame: pl.DataFrame) -> list[pl.Expr]:
    aggs = [
        pl.len().cast(pl.Int64).alias("segments"),
        (pl.col("audio_seconds").sum() / 3600).alias("hours"),
        pl.col("token_count").sum().cast(pl.Int64).alias("speech_tokens"),
    ]
    if "input_ids_count" in frame.columns:
        aggs.append(pl.col("input_ids_count").sum().cast(pl.Int64).alias("training_tokens"))
    return aggs


def totals_by(frame: pl.DataFrame, *columns: str) -> pl.DataFrame:
    """One row per value of `columns`, sorted by hours (largest first) then by name."""
    return (
        frame.group_by(list(columns))
        .agg(_aggregations(frame))
        .sort(["hours", *columns], descending=[True] + [False] * len(columns))
    )


def overall_totals(frame: pl.DataFrame) -> dict[str, float | int]:
    """Totals of the whole frame as plain numbers."""
    row = frame.select(_aggregations(frame)).row(0, named=True)
    return {k: (0 if v is None else v) for k, v in row.items()}
