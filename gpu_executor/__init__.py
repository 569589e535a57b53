"""How the platform runs on GPUs: the batched neucodec encoder engine and the GPU run launcher.

The encoder engine (``gpu_executor.encoder``) has no Dagster import and can be used from a notebook. The launcher
needs Dagster, so it is imported only when ``gpu_executor.GpuRunLauncher`` is first asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpu_executor.launcher import GpuRunLauncher

__all__ = ["GpuRunLauncher"]


def __getattr__(name: str) -> Any:
    if name == "GpuRunLauncher":
        from gpu_executor.launcher import GpuRunLauncher

        return GpuRunLauncher
    raise AttributeError(f"module 'gpu_executor' has no attribute {name!r}")
