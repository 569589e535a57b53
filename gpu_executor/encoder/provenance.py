"""What produced a set of tokens: model ids and revisions, layers, precision, chunking, package versions."""

from __future__ import annotations

from importlib import metadata

__all__ = ["package_versions", "build_provenance"]


def package_versions() -> dict[str, str]:
    out = {}
    for name in ("neucodec", "torch", "transformers"):
        try:
            out[f"{name}_version"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[f"{name}_version"] = "not installed"
    return out


def build_provenance(info: dict[str, str], *, semantic_layers: int, precision: str, chunking: str,
                     max_clip_seconds: float, fused_activation: bool = False) -> dict[str, str]:
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
        "random_weights": info.get("random_weights", "unknown"),
        "token_rate_hz": "50",
        "sample_rate": "16000",
    }
    prov.update(package_versions())
    return prov
