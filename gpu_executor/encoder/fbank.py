"""Batched Kaldi fbank in torch, reproducing ``SeamlessM4TFeatureExtractor`` (the w2v-bert front end) per clip.

The package runs the feature extractor per clip in numpy on the CPU. This computes the same features for a padded
batch on the encoder's device: the same float64 framing, DC removal, pre-emphasis, povey window and rfft, the same
complex64 rounding of the spectrum, the same mel filters (taken from the extractor itself), then per-clip CMVN over
each clip's own frames only (in numpy float32, as the extractor: bit-exact) and the stride-2 stacking to 160 dims.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["BatchedFbank", "fbank_frames"]

_FRAME = 400
_HOP = 160
_NFFT = 512
_PREEMPH = 0.97
_MEL_FLOOR = 1.192092955078125e-07


def fbank_frames(num_samples: int) -> int:
    """Number of 10 ms fbank frames the extractor makes from ``num_samples`` samples (no centering)."""
    return 0 if num_samples < _FRAME else 1 + (num_samples - _FRAME) // _HOP


class BatchedFbank:
    """Callable: padded waves [B, N] (float32, 16 kHz) + lengths -> features [B, S, 160] and frame counts S_i."""

    def __init__(self, feature_extractor, device: torch.device) -> None:
        self.stride = int(getattr(feature_extractor, "stride", 2))
        self.padding_value = float(getattr(feature_extractor, "padding_value", 1.0))
        self.device = device
        self.mel = torch.from_numpy(np.asarray(feature_extractor.mel_filters, dtype=np.float64)).to(device)
        self.window = torch.from_numpy(np.asarray(feature_extractor.window, dtype=np.float64)).to(device)

    @torch.inference_mode()
    def __call__(self, waves: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, list[int]]:
        b = waves.shape[0]
        # Kaldi compliance as the extractor: scale in float32, then promote to float64.
        scaled = (waves.to(self.device, torch.float32) * (2**15)).to(torch.float64)
        frames_per_clip = [fbank_frames(n) for n in lengths]
        fmax = max(frames_per_clip)
        frames = scaled[:, : _FRAME + (fmax - 1) * _HOP].unfold(1, _FRAME, _HOP)  # [B, F, 400]
        frames = frames - frames.mean(dim=-1, keepdim=True)
        emph = torch.cat([frames[..., :1] * (1 - _PREEMPH), frames[..., 1:] - _PREEMPH * frames[..., :-1]], dim=-1)
        spec = torch.fft.rfft(emph * self.window, n=_NFFT, dim=-1)
        spec = spec.to(torch.complex64).to(torch.complex128)  # the extractor stores the spectrum as complex64
        power = spec.abs() ** 2  # [B, F, 257] float64
        mel = torch.clamp(power @ self.mel, min=_MEL_FLOOR)  # [B, F, 80]
        feats = torch.log(mel).to(torch.float32)

        # The extractor pads an odd frame count up to a multiple of the stride with padding_value.
        out_frames = [-(-f // self.stride) for f in frames_per_clip]
        smax = max(out_frames)
        out = np.full((b, smax * self.stride, feats.shape[-1]), self.padding_value, dtype=np.float32)
        # CMVN in numpy float32 exactly as the extractor: its reduction order is numpy's, so this is bit-exact.
        feats_np = feats.cpu().numpy()
        for i, f in enumerate(frames_per_clip):
            # The extractor's features are a transposed [80, F] array: reduce over the same memory layout so
            # that numpy sums in the same (pairwise) order.
            x = np.ascontiguousarray(feats_np[i, :f].T).T
            out[i, :f] = (x - np.expand_dims(x.mean(0), 0)) / np.sqrt(np.expand_dims(x.var(0, ddof=1), 0) + 1e-7)
        out = torch.from_numpy(out).to(self.device, non_blocking=True)
        return out.reshape(b, smax, -1), out_frames
