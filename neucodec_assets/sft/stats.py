"""Totals a training team reads first: segments, hours and tokens per language, dataset and split.

`partial_totals` summarizes one shard's rows; partials of many shards add up with `combine_totals`, so the
dataset asset never holds every segment in memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

SUM_COLUMNS = ("segments", "seconds", "speech_tokens", "training_tokens")


def partial_totals(frame: pl.DataFrame, keys: Sequence[str]) -> pl.DataFrame:
    """Per value of `keys`: segments, seconds, speech_tokens, training_tokens (null without input_ids)."""
    training = (
        pl.col("input_ids_count").sum().cast(pl.Int64)
        if "input_ids_count" in frame.columns and frame.get_column("input_ids_count").null_count() < frame.height
        else pl.lit(None, dtype=pl.Int64)
    )
    return frame.group_by(list(keys)).agg(
        pl.len().cast(pl.Int64).alias("segments"),
        pl.col("audio_seconds").sum().cast(pl.Float64).alias("seconds"),
        pl.col("token_count").sum().cast(pl.Int64).alias("speech_tokens"),
        training.alias("training_tokens"),
    )


def _finish(frame: pl.DataFrame, has_training: bool) -> pl.DataFrame:
    frame = frame.with_columns((pl.col("seconds") / 3600).alias("hours")).drop("seconds")
    if not has_training:
        frame = frame.drop("training_tokens")
    return frame


def _has_training(partials: pl.DataFrame) -> bool:
    return partials.height > 0 and partials.get_column("training_tokens").null_count() == 0


def combine_totals(partials: pl.DataFrame, *columns: str) -> pl.DataFrame:
    """Totals per value of `columns`, sorted by hours (largest first) then by name.

    training_tokens appears only when every partial has it (all shards tokenized).
    """
    summed = partials.group_by(list(columns)).agg(pl.col(c).sum() for c in SUM_COLUMNS)
    ordered = summed.select(*columns, "segments", "seconds", "speech_tokens", "training_tokens")
    ordered = ordered.sort(["seconds", *columns], descending=[True] + [False] * len(columns))
    finished = _finish(ordered, _has_training(partials))
    return finished.select(*columns, "segments", "hours", *[c for c in finished.columns if c.endswith("_tokens")])


def combine_overall(partials: pl.DataFrame) -> dict[str, float | int]:
    """Totals of all partials as plain numbers."""
    summed = partials.select(pl.col(c).sum() for c in SUM_COLUMNS)
    row = _finish(summed, _has_training(partials)).row(0, named=True)
    return {k: (0 if v is None else v) for k, v in row.items()}


def totals_by(frame: pl.DataFrame, *columns: str) -> pl.DataFrame:
    """Totals of raw rows per value of `columns`."""
    return combine_totals(partial_totals(frame, columns), *columns)


def overall_totals(frame: pl.DataFrame) -> dict[str, float | int]:
    """Totals of raw rows as plain numbers."""
    return combine_overall(partial_totals(frame.with_columns(pl.lit(0).alias("_all")), ["_all"]))
