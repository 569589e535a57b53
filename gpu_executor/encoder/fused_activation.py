"""CodecEnc's anti-aliased SnakeBeta in two Triton kernels, for CUDA.

The package runs each ``Activation1d`` as six passes over memory (replicate pad, depthwise transposed conv for the
2x up-sampling, the snake expression, pad again, depthwise low-pass conv with stride 2); the grouped transposed
convolution alone is a large share of the encoder's GPU time (README, "GPU throughput"). Here one kernel up-samples and applies
the snake (each value reads six input samples, indices clamped to its clip's own ``[0, n)``, which is what
replicate padding and the engine's edge replication amount to) and a second low-pass filters that in fp32 (reads
clamped to ``[0, 2n)``). Two kernels, not one: a single kernel recomputes the twelve snake values each output needs,
and sines, not memory, then bound it.

It is the same function, but the sums run in another order than cuDNN's, so fp32 results differ in the last bits
and a few tokens can flip: the engine uses it for ``bf16``/``fp16`` on CUDA and in ``fp32`` only when asked to.
The derivation, for the ratio-2, 12-tap filters of neucodec 0.0.6 (``up`` already multiplied by the ratio)::

    u[2m]   = sum_i up[2i + 1] * x[clamp(m + 2 - i)]      i = 0..5
    u[2m+1] = sum_i up[2i]     * x[clamp(m + 3 - i)]
    s[j]    = u[j] + inv_beta * sin(alpha * u[j]) ** 2
    y[t]    = sum_k down[k] * s[clamp(2t + k - 5, 0, 2n - 1)]   k = 0..11
"""

from __future__ import annotations

import torch

from gpu_executor.settings import load_settings

try:  # Triton ships with CUDA builds of torch; CPU builds run the unfused path.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None
    tl = None

__all__ = ["fused_activation_available", "fused_snake_activation", "TAPS", "RATIO"]

TAPS = 12
RATIO = 2
_BLOCK = 256


def fused_activation_available(device: torch.device) -> bool:
    """Whether the kernel can run for tensors on ``device`` (CUDA with Triton, or Triton's CPU interpreter)."""
    if triton is None:
        return False
    return device.type == "cuda" or load_settings().triton_interpret


if triton is not None:

    @triton.jit
    def _up_snake_kernel(x_ptr, s_ptr, len_ptr, alpha_ptr, inv_beta_ptr, up_ptr, C, T, TILES,
                         BLOCK: tl.constexpr):
        """s[j] for j < 2T: the 2x up-sampled row through the snake, in fp32 (one sine per value)."""
        # A 1-D grid of (row, tile) pairs: CUDA caps the second grid axis at 65535 tiles (a 524 s row).
        row = tl.program_id(0) // TILES  # b * C + c
        tile = tl.program_id(0) % TILES
        n = tl.load(len_ptr + row // C)
        alpha = tl.load(alpha_ptr + row % C).to(tl.float32)
        inv_beta = tl.load(inv_beta_ptr + row % C).to(tl.float32)
        j = tile * BLOCK + tl.arange(0, BLOCK)
        m = j // 2
        odd = j - 2 * m
        x_row = x_ptr + row.to(tl.int64) * T
        u = tl.zeros([BLOCK], dtype=tl.float32)
        for i in tl.static_range(6):
            f = tl.where(odd == 1, tl.load(up_ptr + 2 * i), tl.load(up_ptr + 2 * i + 1))
            idx = tl.minimum(tl.maximum(m + 2 + odd - i, 0), n - 1)
            u += f * tl.load(x_row + idx).to(tl.float32)
        sine = tl.sin(u * alpha)
        tl.store(s_ptr + row.to(tl.int64) * 2 * T + j, u + inv_beta * (sine * sine), mask=j < 2 * T)

    @triton.jit
    def _down_kernel(s_ptr, y_ptr, len_ptr, down_ptr, C, T, TILES, BLOCK: tl.constexpr):
        """y[t] = sum_k down[k] * s[clamp(2t + k - 5, 0, 2n - 1)]: the low-pass filter with replicate padding."""
        row = tl.program_id(0) // TILES
        n = tl.load(len_ptr + row // C)
        t = (tl.program_id(0) % TILES) * BLOCK + tl.arange(0, BLOCK)
        s_row = s_ptr + row.to(tl.int64) * 2 * T
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range(12):
            j = tl.minimum(tl.maximum(2 * t + (k - 5), 0), 2 * n - 1)
            acc += tl.load(down_ptr + k) * tl.load(s_row + j)
        tl.store(y_ptr + row.to(tl.int64) * T + t, acc.to(y_ptr.dtype.element_ty), mask=t < T)


def fused_snake_activation(x: torch.Tensor, lengths: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor,
                           up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """``Activation1d(SnakeBeta)`` of ``x`` [B, C, T]; row ``b`` is a clip of ``lengths[b]`` samples (1..T).

    ``alpha``/``inv_beta``: per-channel snake parameters [C]; ``up`` (times the ratio) and ``down``: the 12 filter
    taps. Positions past a clip's length hold values of no meaning, as in the unfused batched path.
    """
    if triton is None:
        raise RuntimeError("the fused activation needs Triton (it ships with CUDA builds of torch)")
    b, c, t = x.shape
    x = x.contiguous()
    n = lengths.to(device=x.device)
    snake = torch.empty((b, c, 2 * t), dtype=torch.float32, device=x.device)
    tiles = triton.cdiv(2 * t, _BLOCK)
    _up_snake_kernel[(b * c * tiles,)](
        x, snake, n, alpha.float().contiguous(), inv_beta.float().contiguous(), up.float().contiguous(), c, t, tiles,
        BLOCK=_BLOCK)
    y = torch.empty_like(x)
    tiles = triton.cdiv(t, _BLOCK)
    _down_kernel[(b * c * tiles,)](snake, y, n, down.float().contiguous(), c, t, tiles, BLOCK=_BLOCK)
    return y
