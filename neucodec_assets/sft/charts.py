"""PNG charts for the materialization and the dataset card (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

DPI = 90


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()


def hours_per_language_png(by_language: pl.DataFrame) -> bytes:
    """Horizontal bars of hours per language (a frame with `language` and `hours`)."""
    frame = by_language.sort("hours")
    figure, axis = plt.subplots(figsize=(7, 0.35 * max(frame.height, 3) + 1.2))
    axis.barh(frame.get_column("language").to_list(), frame.get_column("hours").to_list(), color="#3b7dd8")
    axis.set_xlabel("hours")
    axis.set_title("Hours per language")
    return _png(figure)


def duration_histogram_png(audio_seconds: pl.Series, bins: int = 40) -> bytes:
    """Histogram of clip durations in seconds."""
    values = audio_seconds.drop_nulls().to_numpy()
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.hist(values if values.size else np.zeros(0), bins=bins, color="#d8823b")
    axis.set_xlabel("clip duration (s)")
    axis.set_ylabel("segments")
    axis.set_title(f"Clip durations ({values.size:,} segments)")
    return _png(figure)


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown with the PNG inlined as a data URI, for dg.MetadataValue.md."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
