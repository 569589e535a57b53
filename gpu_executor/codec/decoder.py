"""The neucodec package's own decoder, loaded alone (no encoder, no wav2vec2-bert) from a neucodec checkpoint folder.

``NeuCodec.decode_code`` runs ``generator.quantizer.get_output_from_indices`` (FSQ dequantization), ``fc_post_a``
and the Vocos generator (``CodecDecoderVocos``: transformer backbone + ISTFT head) and returns 24 kHz audio. Here the
same classes are built as ``NeuCodec(24000, 480)`` builds them, their weights are read from ``pytorch_model.bin``
strictly (every weight must be present: the package's ``strict=False`` would leave a missing one random), and the
package's unbound ``NeuCodec.decode_code`` is called on them, so the decode path is the package's code itself.

No Dagster import. ``NeucodecDecoder.from_pretrained(folder_or_hub_id, device=...)``, then ``decode(codes)`` (24 kHz)
or ``decode_16k(codes)`` (resampled with soxr HQ, as the platform prepares audio).
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn

from gpu_executor.codec import SAMPLE_RATE
from gpu_executor.codec.neucodec_compat import import_neucodec
from gpu_executor.encoder.engine import device_guard
from gpu_executor.encoder.loading import load_codec_checkpoint, load_strict
from gpu_executor.encoder.tf32_switch import tf32_mode

__all__ = ["NeucodecDecoder", "DECODER_SAMPLE_RATE"]

DECODER_SAMPLE_RATE = 24_000
_HOP_24K = 480


class _DecodeParts(nn.Module):
    """What ``NeuCodec.decode_code`` touches on ``self``: ``generator`` and ``fc_post_a``."""

    def __init__(self) -> None:
        super().__init__()
        import_neucodec()
        from neucodec.codec_decoder_vocos import CodecDecoderVocos

        self.generator = CodecDecoderVocos(hop_length=_HOP_24K)
        self.fc_post_a = nn.Linear(2048, 1024)


class NeucodecDecoder:
    """Codes (50 Hz, uint16) -> audio, through the package's ``NeuCodec.decode_code`` in fp32."""

    def __init__(self, parts: _DecodeParts, device: str | torch.device = "cpu", info: dict[str, str] | None = None,
                 load_seconds: float = 0.0) -> None:
        self.device = torch.device(device)
        self._parts = parts.to(self.device).float().eval()
        self.info = dict(info or {})
        self.load_seconds = load_seconds
        neucodec = import_neucodec()
        self._decode_code = neucodec.NeuCodec.decode_code

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "neuphonic/neucodec", *,
                        device: str | torch.device = "cpu") -> "NeucodecDecoder":
        """Load the decoder weights from a hub id (through the local cache first) or a local folder."""
        start = time.perf_counter()
        folder, state = load_codec_checkpoint(model)
        parts = _DecodeParts()
        load_strict(parts.generator, "generator", state, folder.source)
        load_strict(parts.fc_post_a, "fc_post_a", state, folder.source)
        del state
        info = {"model": folder.source, "model_revision": folder.revision, "model_folder": str(folder.path)}
        return cls(parts, device, info, time.perf_counter() - start)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """One clip's codes ``[F]`` -> 24 kHz float32 audio of ``F * 480`` samples.

        On CUDA in exact fp32 (torch's default would let cuDNN convolutions use TF32), on the decoder's device."""
        codes = np.asarray(codes)
        if codes.ndim != 1 or codes.size == 0:
            raise ValueError("decode takes one clip's non-empty 1-D code array")
        with device_guard(self.device), tf32_mode(self.device, False):
            x = torch.from_numpy(codes.astype(np.int64))[None, None, :].to(self.device)
            recon = self._decode_code(self._parts, x)
            return recon[0, 0].float().cpu().numpy()

    def decode_16k(self, codes: np.ndarray) -> np.ndarray:
        """``decode`` resampled to 16 kHz with ``soxr.resample(..., quality="HQ")``: ``F * 320`` samples."""
        import soxr

        return soxr.resample(self.decode(codes), DECODER_SAMPLE_RATE, SAMPLE_RATE, quality="HQ").astype(np.float32)
