"""PNG charts shared by the features (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

DPI = 90

__all__ = ["DPI", "figure_png", "markdown_image", "plt"]


def figure_png(figure: plt.Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown with the PNG inlined as a data URI, for dg.MetadataValue.md."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
