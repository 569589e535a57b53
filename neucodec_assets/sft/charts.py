"""PNG charts of the SFT dataset for its materialization and card."""

from __future__ import annotations

import numpy as np
import polars as pl

from neucodec_assets.charts import figure_png, plt


def hours_per_language_png(by_language: pl.DataFrame) -> bytes:
    """Horizontal bars of hours per language (a frame with `language` and `hours`)."""
    frame = by_language.sort("hours")
    figure, axis = plt.subplots(figsize=(7, 0.35 * max(frame.height, 3) + 1.2))
    axis.barh(frame.get_column("language").to_list(), frame.get_column("hours").to_list(), color="#3b7dd8")
    axis.set_xlabel("hours")
    axis.set_title("Hours per language")
    return figure_png(figure)


DURATION_BIN_EDGES = np.concatenate([np.arange(0.0, 60.0, 1.0), [60.0, np.inf]])  # 1 s bins, last: 60 s and up


def duration_histogram(audio_seconds: np.ndarray) -> np.ndarray:
    """Counts per DURATION_BIN_EDGES bin; counts of several shards add up."""
    counts, _ = np.histogram(np.asarray(audio_seconds, dtype=np.float64), bins=DURATION_BIN_EDGES)
    return counts.astype(np.int64)


def duration_histogram_png(counts: np.ndarray) -> bytes:
    """Bars of clip-duration counts in the DURATION_BIN_EDGES bins."""
    counts = np.asarray(counts, dtype=np.int64)
    widths = np.diff(DURATION_BIN_EDGES[:-1])
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.bar(DURATION_BIN_EDGES[:-2], counts[:-1], width=widths, align="edge", color="#d8823b")
    axis.bar([DURATION_BIN_EDGES[-2]], [counts[-1]], width=2.0, align="edge", color="#8a4b16")
    axis.set_xlabel("clip duration (s); last bar: 60 s and longer")
    axis.set_ylabel("segments")
    axis.set_title(f"Clip durations ({int(counts.sum()):,} segments)")
    return figure_png(figure)
