"""Precision modes: weights cast once at load, bf16/fp16 refused where emulated (TF32 is switched per call by
``tf32_switch``).

Under autocast every ``Linear`` and ``Conv1d`` casts its fp32 weight to bf16/fp16 on every call (hundreds of cast
kernels and their memory traffic per batch for 16 w2v-bert layers). Casting those weights once at load gives
the same numbers: autocast rounds an fp32 weight to the low precision with the same round-to-nearest cast, and
passes a weight already in that precision through untouched. Norms keep fp32 weights, as autocast runs them in
fp32 anyway.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PRECISIONS", "cast_matmul_weights", "check_cpu_precision"]

PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_CAST = (nn.Linear, nn.Conv1d, nn.Embedding)


def cast_matmul_weights(module: nn.Module, dtype: torch.dtype) -> int:
    """Cast the parameters of every Linear, Conv1d and Embedding in ``module`` to ``dtype`` in place; returns how
    many modules were cast. Norm layers keep their fp32 parameters."""
    count = 0
    for m in module.modules():
        if isinstance(m, _CAST):
            m.to(dtype)
            count += 1
    return count


def check_cpu_precision(precision: str) -> None:
    """Refuse bf16/fp16 on a CPU without native support (oneDNN emulates them there, hundreds of times slower),
    and TF32 on any CPU (it is a CUDA tensor-core format)."""
    if precision == "tf32":
        raise ValueError("precision 'tf32' is a CUDA tensor-core mode: use precision='fp32' on a CPU")
    probe = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}.get(precision)
    if probe is None:
        return
    try:
        supported = bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # an unknown torch build: let it run
        return
    if not supported:
        raise ValueError(
            f"precision {precision!r} on this CPU: it has no native {precision} arithmetic "
            f"({torch.backends.cpu.get_cpu_capability()}), so {precision} would run "
            "emulated, far slower than fp32. Use precision='fp32' here, or a GPU."
        )
