"""Batched, exact neucodec encoder engine (no Dagster import: usable from a notebook).

``NeucodecEncoder.from_pretrained(...)`` / ``.from_model(...)``, then ``encode(waves)`` or ``encode_stream(items)``.
"""

from gpu_executor.encoder.calls import EncodedClips, EncodeStream
from gpu_executor.encoder.engine import (
           CHUNKING_MODES,
           GRAPH_MODES,
           PRECISIONS,
           NeucodecEncoder,
           default_batch_seconds,
)
from gpu_executor.encoder.loading import ModelLoadError

__all__ = ["NeucodecEncoder", "ModelLoadError", "PRECISIONS", "CHUNKING_MODES", "GRAPH_MODES", "default_batch_seconds",
           "EncodedClips", "EncodeStream"]
