"""What produced a set of tokens: model ids and revisions, layers, precision, chunking, package versions."""

from __future__ import annotations

from importlib import metadata

__all__ = ["IDENTITY_KEYS", "package_versions", "build_provenance", "device_class"]

# What "made the same way" means: every provenance entry that can change a single token. Two tokens files agree on
# all of these or were not made the same way (package versions and creation times do not count).
IDENTITY_KEYS = (
    "model", "model_revision", "model_sha256", "random_weights", "semantic_model", "semantic_model_revision",
    "semantic_layers", "precision", "acoustic_activation", "chunking", "max_clip_seconds", "device_class",
    "semantic_graphs",  # present only when not "off": bucket padding changes shapes, and so GPU rounding
)
from gpu_executor.codec import SAMPLE_RATE


def device_class(device: object) -> str:
    """Class "cpu" or "cuda" (of "cuda:1" too): fp32 on CUDA may round a few tokens unlike the CPU oracle (DESIGN)."""
    return str(device).split(":", 1)[0]


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("neucodec", "torch", "transformers"):
        try:
            out[f"{name}_version"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"{name}_version"] = "not installed"
    return out


def build_provenance(info: dict[str, str], *, semantic_layers: int, precision: str, chunking: str,
                     max_clip_seconds: float, fused_activation: bool = False,
                     device: object = "unknown") -> dict[str, str]:
    """All values are strings so that they fit parquet key-value metadata and Dagster metadata alike."""
    prov = {
        "model": info.get("model", "unknown"),
        "model_revision": info.get("model_revision", "unknown"),
        "model_sha256": info.get("model_sha256", "unknown"),
        "semantic_model": info.get("semantic_model", "unknown"),
        "semantic_model_revision": info.get("semantic_model_revision", "unknown"),
        "semantic_layers": str(semantic_layers),
        "precision": precision,
        "chunking": chunking,
        "max_clip_seconds": f"{max_clip_seconds:g}",
        "acoustic_activation": "fused-triton" if fused_activation else "reference",
        "device_class": device_class(device),
        "random_weights": info.get("random_weights", "unknown"),
        "token_rate_hz": "50",
        "sample_rate": str(SAMPLE_RATE),
    }
    prov.update(package_versions())
    return prov
