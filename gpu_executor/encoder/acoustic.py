"""The convolutional acoustic encoder (``CodecEnc``) for a padded batch of clips of different lengths.

Each clip must come out as if it ran alone. Alone, a clip sees zeros past its end at every zero-padded
convolution and a copy of its last sample at every anti-aliasing filter (they pad by replication). In a batch,
the positions past a clip's end hold its padding and, after the first layer, values computed from it. So before
every operation that reads past the end, the tail of each shorter clip is reset: zeros before a convolution,
the clip's last value before an up- or down-sampling filter. Lengths are tracked through the strided layers
(every clip length here is a multiple of 320, so each stage divides it exactly).

Weight-normalized convolutions are evaluated once (``g * v / ||v||``, the same function the hook calls), and
the package's modules are never modified, so ``from_model`` can share them with a live ``NeuCodec``.

With ``fused=True`` (CUDA) each anti-aliased activation runs as two Triton kernels (``fused_activation``) that
clamp reads to each clip's own length, so they need no tail handling of their own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpu_executor.encoder.fused_activation import RATIO, TAPS, fused_snake_activation

__all__ = ["BatchedCodecEnc", "past_end"]


def _effective_weight(conv: nn.Conv1d) -> torch.Tensor:
    if hasattr(conv, "weight_g") and hasattr(conv, "weight_v"):
        return torch._weight_norm(conv.weight_v, conv.weight_g, 0).detach()
    if hasattr(conv, "parametrizations") and "weight" in conv.parametrizations:
        return conv.weight.detach()
    return conv.weight.detach()


def past_end(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """[B, 1, T] mask of the positions of ``x`` [B, C, T] at or past each row's length ``n`` [B]."""
    return torch.arange(x.shape[-1], device=x.device)[None, None, :] >= n[:, None, None]


def _snake_params(act: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``alpha`` and ``1 / (beta + eps)`` [C] of a Snake/SnakeBeta, as its forward computes them."""
    alpha = act.alpha.detach()
    beta = getattr(act, "beta", act.alpha).detach()
    if act.alpha_logscale:
        alpha, beta = torch.exp(alpha), torch.exp(beta)
    return alpha, 1.0 / (beta + act.no_div_by_zero)


class _CallState:
    """Per-call scratch: two reusable padding buffers and each layer's clip lengths as device tensors.

    The length tensors are made once per distinct set of lengths (a handful per call): creating one per layer from
    a Python list is a blocking host-to-device copy, which on a GPU kept the CPU from running ahead of the kernels.
    """

    def __init__(self, like: torch.Tensor) -> None:
        self.buffers = [like.new_empty(0), like.new_empty(0)]
        self._lengths: dict[tuple[int, ...], torch.Tensor] = {}
        self._device = like.device

    def lengths(self, lengths: list[int]) -> torch.Tensor:
        key = tuple(lengths)
        if key not in self._lengths:
            host = torch.tensor(key)
            if self._device.type == "cuda":  # pinned and asynchronous: the host keeps queueing kernels
                host = host.pin_memory()
            self._lengths[key] = host.to(self._device, non_blocking=True)
        return self._lengths[key]


class BatchedCodecEnc:
    """Callable: waves [B, 1, N] (zero-padded) + lengths (multiples of 320) -> embeddings [B, frames, 1024]."""

    def __init__(self, codec_enc: nn.Module, dtype: torch.dtype = torch.float32, fused: bool = False) -> None:
        self.module = codec_enc
        self.dtype = dtype
        self.fused = fused
        self.fused_params: dict[int, tuple[torch.Tensor, ...]] = {}  # fp32 alpha, inv_beta, up and down taps
        self.weights: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.snake: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.up_filters: dict[int, torch.Tensor] = {}
        self.down_filters: dict[int, torch.Tensor] = {}
        for m in codec_enc.modules():
            if isinstance(m, nn.Conv1d):
                bias = None if m.bias is None else m.bias.detach().to(dtype)
                self.weights[id(m)] = (_effective_weight(m).to(dtype), bias)
            elif type(m).__name__ in {"SnakeBeta", "Snake"}:
                alpha, inv_beta = _snake_params(m)
                self.snake[id(m)] = (alpha[None, :, None].to(dtype), inv_beta[None, :, None].to(dtype))
            elif type(m).__name__ == "Activation1d":
                up, lp = m.upsample, m.downsample.lowpass
                if lp.padding and lp.padding_mode != "replicate":
                    raise TypeError(f"unexpected low-pass padding mode {lp.padding_mode!r} in CodecEnc")
                if up.ratio <= 0 or up.ratio & (up.ratio - 1):
                    raise TypeError(f"up-sampling ratio {up.ratio} is not a power of two: scaling would round")
                if fused:  # the kernels take fp32 taps and snake parameters; no per-channel filter copies
                    shape = (up.ratio, up.stride, up.kernel_size, lp.kernel_size, lp.stride, bool(lp.padding),
                             lp.pad_left, lp.pad_right)
                    if shape != (RATIO, RATIO, TAPS, TAPS, RATIO, True, TAPS // 2 - 1, TAPS // 2):
                        raise TypeError(f"the fused activation assumes ratio-2, 12-tap filters; got {shape}")
                    self.fused_params[id(m)] = (*(p.float() for p in _snake_params(m.act)),
                                                up.filter.detach().float().flatten() * up.ratio,
                                                lp.filter.detach().float().flatten())
                    continue
                channels = m.act.alpha.shape[0]
                up_filter = up.filter.detach().to(dtype) * up.ratio
                self.up_filters[id(m)] = up_filter.expand(channels, -1, -1).contiguous()
                self.down_filters[id(m)] = lp.filter.detach().to(dtype).expand(channels, -1, -1).contiguous()

    # -- tail handling -------------------------------------------------------------------------------------
    # One masked operation per layer rather than one per clip: on a GPU, per-clip slices meant thousands of tiny
    # kernel launches per batch. Both write exactly the values the per-clip assignments wrote.
    @staticmethod
    def _zero_tail(x: torch.Tensor, lengths: list[int], state: _CallState) -> torch.Tensor:
        if all(n >= x.shape[-1] for n in lengths):
            return x
        return x.masked_fill_(past_end(x, state.lengths(lengths)), 0)

    @staticmethod
    def _edge_tail(x: torch.Tensor, lengths: list[int], state: _CallState) -> torch.Tensor:
        if all(n >= x.shape[-1] for n in lengths):
            return x
        n = state.lengths(lengths)
        last = x.gather(2, (n - 1).view(-1, 1, 1).expand(-1, x.shape[1], 1))
        return torch.where(past_end(x, n), last, x, out=x)

    # -- layers --------------------------------------------------------------------------------------------
    def _conv(self, conv: nn.Conv1d, x: torch.Tensor, lengths: list[int], ragged: bool, state: _CallState):
        weight, bias = self.weights[id(conv)]
        if ragged and (conv.kernel_size[0] > 1 or conv.padding[0] > 0):
            x = self._zero_tail(x, lengths, state)
        y = F.conv1d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        return y, [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n in lengths]

    def _snake_into(self, act: nn.Module, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out = x + 1/beta * sin(alpha x)^2`` in place, bit-identical to the package's expression.

        Same rounding steps as ``x + inv_beta * pow(sin(x * alpha), 2)``: ``pow(t, 2)`` is ``t * t`` in ATen, and
        IEEE products and sums are commutative, so only temporaries and their page faults are saved.
        """
        alpha, inv_beta = self.snake[id(act)]
        torch.mul(x, alpha, out=out)
        out.sin_()
        out.mul_(out)
        out.mul_(inv_beta)
        return out.add_(x)

    @staticmethod
    def _padded(x: torch.Tensor, left: int, right: int, scratch: list[torch.Tensor], slot: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """An uninitialized buffer ``[B, C, left + T + right]`` and its middle view, for replicate padding.

        It lives in ``scratch[slot]``, reused across the layers of one call: the buffers shrink layer by layer, so
        only the first layer pays for fresh pages. Slot 0 feeds the up-sampler, slot 1 the low-pass filter.
        """
        b, c, t = x.shape
        n = b * c * (left + t + right)
        if scratch[slot].numel() < n:
            scratch[slot] = torch.empty(n, dtype=x.dtype, device=x.device)
        buf = scratch[slot][:n].view(b, c, left + t + right)
        return buf, buf[..., left : left + t]

    @staticmethod
    def _fill_edges(buf: torch.Tensor, left: int, right: int) -> torch.Tensor:
        """Replicate padding of a filled middle: plain copies, the same values ``F.pad(mode="replicate")`` gives."""
        t = buf.shape[-1] - left - right
        if left:
            buf[..., :left] = buf[..., left : left + 1]
        if right:
            buf[..., left + t :] = buf[..., left + t - 1 : left + t]
        return buf

    def _activation1d(self, m: nn.Module, x: torch.Tensor, lengths: list[int], ragged: bool,
                      state: _CallState) -> torch.Tensor:
        if self.fused:
            return fused_snake_activation(x, state.lengths(lengths), *self.fused_params[id(m)])
        scratch = state.buffers
        if ragged:
            x = self._edge_tail(x, lengths, state)
        up = m.upsample
        c = x.shape[1]
        buf, mid = self._padded(x, up.pad, up.pad, scratch, 0)
        mid.copy_(x)
        x = self._fill_edges(buf, up.pad, up.pad)
        # ratio * conv_transpose(x, f) == conv_transpose(x, ratio * f) bit for bit: the ratio is a power of two.
        x = F.conv_transpose1d(x, self.up_filters[id(m)], stride=up.stride, groups=c)
        x = x[..., up.pad_left : -up.pad_right]
        lp = m.downsample.lowpass
        left, right = (lp.pad_left, lp.pad_right) if lp.padding else (0, 0)
        buf, mid = self._padded(x, left, right, scratch, 1)
        self._snake_into(m.act, x, mid)
        if ragged:
            self._edge_tail(mid, [n * up.ratio for n in lengths], state)
        x = self._fill_edges(buf, left, right)
        return F.conv1d(x, self.down_filters[id(m)], stride=lp.stride, groups=c)

    def _run(self, m: nn.Module, x: torch.Tensor, lengths: list[int], ragged: bool, state: _CallState):
        name = type(m).__name__
        if isinstance(m, nn.Conv1d):
            return self._conv(m, x, lengths, ragged, state)
        if name == "Activation1d":
            return self._activation1d(m, x, lengths, ragged, state), lengths
        if isinstance(m, nn.Sequential):
            for child in m:
                x, lengths = self._run(child, x, lengths, ragged, state)
            return x, lengths
        if name == "ResidualUnit":
            y, _ = self._run(m.block, x, lengths, ragged, state)
            return x + y, lengths
        if name == "EncoderBlock":
            return self._run(m.block, x, lengths, ragged, state)
        raise TypeError(f"unexpected module {name} in CodecEnc: the engine follows neucodec 0.0.6's encoder")

    def __call__(self, waves: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, list[int]]:
        ragged = any(n != waves.shape[-1] for n in lengths)
        x = waves.to(self.dtype)
        state = _CallState(x)  # per call: nothing stays allocated between calls
        x, lengths = self._run(self.module.conv_blocks, x, lengths, ragged, state)
        x, lengths = self._run(self.module.conv_final_block, x, lengths, ragged, state)
        return x.transpose(1, 2), lengths
