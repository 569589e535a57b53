"""``NeucodecEncoder``: exact, batched neucodec encoding (fp32 tokens on CPU identical to ``NeuCodec.encode_code``)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from gpu_executor.encoder.acoustic import BatchedCodecEnc, past_end
from gpu_executor.encoder.batching import HOP, SAMPLE_RATE, padded_length, plan_batches, plan_chunks
from gpu_executor.encoder.fbank import BatchedFbank
from gpu_executor.encoder.fused_activation import fused_activation_available
from gpu_executor.encoder.loading import SEMANTIC_LAYERS, EncoderParts, load_parts, parts_from_neucodec
from gpu_executor.encoder.provenance import build_provenance
from gpu_executor.encoder.semantic import SemanticStack

__all__ = ["NeucodecEncoder", "PRECISIONS", "CHUNKING_MODES", "default_batch_seconds", "check_cpu_precision"]

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CHUNKING_MODES = ("overlap", "seed")


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device (torch {torch.__version__})")
    return dev


def check_cpu_precision(precision: str) -> None:
    """Refuse bf16/fp16 on a CPU without native support: oneDNN emulates them there, hundreds of times slower.

    Measured on a 2-core AVX2 EPYC: a 2048^3 matrix product ran at 73 GFLOP/s in fp32 and 0.28 in bf16.
    """
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
            f"({torch.backends.cpu.get_cpu_capability()}), so {precision} would run far slower than fp32 "
            "(a matrix product ~250x slower on an AVX2 CPU). Use precision='fp32' here, or a GPU."
        )


def default_batch_seconds(device: torch.device) -> float:
    """Padded audio seconds per batch: small on CPU (batching barely helps there), memory-scaled on GPUs."""
    if device.type == "cuda":
        total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        return float(max(60, min(1200, int(total_gib * 8))))
    return 20.0


class NeucodecEncoder:
    """Encode 16 kHz mono float32 clips into 50 Hz neucodec codes (uint16), batched by length.

    Build it with :meth:`from_pretrained` (hub ids or local folders) or :meth:`from_model` (a live
    ``neucodec.NeuCodec``). In ``fp32`` (default) on a CPU the codes equal the package's ``encode_code`` per clip
    (on a GPU, cuDNN rounds a batch and a lone clip differently: measured 99.992% equal); ``bf16``
    and ``fp16`` run the semantic model (and, on CUDA, the acoustic encoder) in that precision, the quantizer
    always in fp32. Clips longer than ``max_clip_seconds`` are chunked and their ids are listed in
    :attr:`chunked_ids`: ``overlap`` encodes ``chunk_seconds`` cores with ``chunk_context_seconds`` of context on
    each side (dropped after encoding); ``seed`` splits every clip longer than ``seed_chunk_seconds`` (30 s) into
    hard splits encoded on their own, reproducing the old fleet's tokens. ``fused_activation`` runs the acoustic
    encoder's anti-aliased activations as two Triton kernels each (CUDA only; default on for bf16/fp16, off for
    fp32, where it changes the last bits of the sums and so a few tokens).
    """

    def __init__(self, parts: EncoderParts, *, device: str | torch.device = "auto", precision: str = "fp32",
                 batch_seconds: float | None = None, max_clip_seconds: float = 120.0, chunking: str = "overlap",
                 chunk_seconds: float = 60.0, chunk_context_seconds: float = 10.0, seed_chunk_seconds: float = 30.0,
                 stream_buffer_seconds: float | None = None, min_batch_fill: float | None = None,
                 acoustic_per_clip: bool | None = None, fused_activation: bool | None = None) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {sorted(PRECISIONS)}")
        if chunking not in CHUNKING_MODES:
            raise ValueError(f"chunking {chunking!r}: choose one of {CHUNKING_MODES}")
        if max_clip_seconds <= 0:
            raise ValueError("max_clip_seconds must be positive")
        self._device = resolve_device(device)
        if self._device.type == "cpu":
            check_cpu_precision(precision)
        can_fuse = self._device.type == "cuda" and fused_activation_available(self._device)
        if fused_activation and not can_fuse:
            why = (f"the encoder runs on {self._device}" if self._device.type != "cuda"
                   else "Triton cannot be imported (it ships with CUDA builds of torch)")
            raise ValueError(f"fused_activation (NEUCODEC_FUSED_ACTIVATION) needs a CUDA device with Triton: {why}")
        self.fused_activation = bool(can_fuse and precision != "fp32" if fused_activation is None
                                     else fused_activation)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.chunking = chunking
        # In seed mode the old fleet's rule decides: every clip longer than one split is split.
        self.max_clip_seconds = float(seed_chunk_seconds if chunking == "seed" else max_clip_seconds)
        self.chunk_seconds = min(float(chunk_seconds), self.max_clip_seconds)
        self.chunk_context_seconds = float(chunk_context_seconds)
        self.seed_chunk_seconds = float(seed_chunk_seconds)
        self.batch_seconds = float(batch_seconds) if batch_seconds else default_batch_seconds(self._device)
        # CPUs gain little from batching, so they batch only near-equal lengths; GPUs trade some padding for width.
        self.min_batch_fill = float(min_batch_fill if min_batch_fill is not None
                                    else (0.5 if self._device.type == "cuda" else 0.85))
        # On CPUs the convolutional encoder runs faster clip by clip (its activations at 32 kHz outgrow the caches
        # when batched); GPUs run it batched with per-clip tail handling.
        self.acoustic_per_clip = bool(self._device.type == "cpu" if acoustic_per_clip is None else acoustic_per_clip)
        self.stream_buffer_seconds = float(stream_buffer_seconds or max(4 * self.batch_seconds, 120.0))
        self.chunked_ids: list[str] = []
        if self._device.type == "cuda" and precision == "fp32":
            # TF32 would change tokens: exact mode keeps full fp32 matmuls and convolutions.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False

        dev = self._device
        self._fbank = BatchedFbank(parts.feature_extractor, dev)
        semantic = parts.semantic_model.to(dev).eval()
        self._semantic = SemanticStack(semantic, SEMANTIC_LAYERS).eval()
        self._semantic_encoder = parts.semantic_encoder.to(dev).eval()
        self._fc_prior = parts.fc_prior.to(dev).eval()
        self._quantizer = parts.quantizer.to(dev).float().eval()
        # bf16 convolutions at high time resolution are slower than fp32 on CPUs: keep CodecEnc fp32 there.
        acoustic_dtype = self.dtype if dev.type == "cuda" else torch.float32
        self._acoustic = BatchedCodecEnc(parts.codec_enc.to(dev).eval(), acoustic_dtype, fused=self.fused_activation)
        self.provenance: dict[str, str] = build_provenance(
            parts.info, semantic_layers=SEMANTIC_LAYERS, precision=precision, chunking=chunking,
            max_clip_seconds=self.max_clip_seconds, fused_activation=self.fused_activation,
            device=self._device,
        )

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "neuphonic/neucodec",
                        semantic_model: str | os.PathLike = "facebook/w2v-bert-2.0", **kwargs) -> "NeucodecEncoder":
        """Load from hub ids or local folders in the hub layout; every encoder weight must be in the checkpoint."""
        return cls(load_parts(model, semantic_model), **kwargs)

    @classmethod
    def from_model(cls, neucodec_model: torch.nn.Module, **kwargs) -> "NeucodecEncoder":
        """Wrap an already built ``neucodec.NeuCodec`` (its modules are shared, not copied or modified)."""
        return cls(parts_from_neucodec(neucodec_model), **kwargs)

    @property
    def device(self) -> str:
        return str(self._device)

    # -- public encoding -----------------------------------------------------------------------------------------
    def encode(self, waves: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> list[np.ndarray]:
        """Codes per clip: ``len(out[i]) == len(waves[i]) // 320``; clips under 320 samples give empty arrays."""
        arrays = [self._check(w, i) for i, w in enumerate(waves)]
        names = [str(x) for x in ids] if ids is not None else [str(i) for i in range(len(arrays))]
        out: list[np.ndarray | None] = [None] * len(arrays)
        limit = int(self.max_clip_seconds * SAMPLE_RATE)
        pieces: list[np.ndarray] = []  # the clips (or chunk windows) actually run through the model
        owners: list[tuple[int, int, int]] = []  # (clip index, keep_from, keep_to) per piece
        for i, w in enumerate(arrays):
            if len(w) < HOP:
                out[i] = np.zeros(0, dtype=np.uint16)
            elif len(w) > limit:
                self.chunked_ids.append(names[i])
                for c in plan_chunks(len(w), self.chunking, int(self.chunk_seconds * SAMPLE_RATE),
                                     int(self.chunk_context_seconds * SAMPLE_RATE),
                                     int(self.seed_chunk_seconds * SAMPLE_RATE)):
                    pieces.append(w[c.start:c.stop])
                    owners.append((i, c.keep_from, c.keep_to))
            else:
                pieces.append(w)
                owners.append((i, 0, len(w) // HOP))
        codes = self._encode_pieces(pieces)
        parts: dict[int, list[np.ndarray]] = {}
        for (i, a, b), c in zip(owners, codes):
            parts.setdefault(i, []).append(c[a:b])
        for i, chunks in parts.items():
            out[i] = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        return out  # type: ignore[return-value]

    def encode_stream(self, items: Iterable[tuple[str, np.ndarray]]) -> Iterator[tuple[str, np.ndarray]]:
        """Yield ``(id, codes)`` in input order, holding at most ~``stream_buffer_seconds`` of audio at once."""
        budget = int(self.stream_buffer_seconds * SAMPLE_RATE)
        ids: list[str] = []
        waves: list[np.ndarray] = []
        held = 0
        for key, wave in items:
            ids.append(key)
            waves.append(wave)
            held += len(wave)
            if held >= budget:
                yield from zip(ids, self.encode(waves, ids))
                ids, waves, held = [], [], 0
        if waves:
            yield from zip(ids, self.encode(waves, ids))

    # -- internals -------------------------------------------------------------------------------------------------
    @staticmethod
    def _check(wave: np.ndarray, index: int) -> np.ndarray:
        w = np.asarray(wave)
        if w.ndim != 1:
            raise ValueError(f"clip {index}: expected a 1-D 16 kHz mono array, got shape {w.shape}")
        w = w.astype(np.float32, copy=False)
        if w.size and not np.isfinite(w).all():
            raise ValueError(f"clip {index}: contains NaN or infinite samples")
        return w

    def _encode_pieces(self, pieces: list[np.ndarray]) -> list[np.ndarray]:
        if not pieces:
            return []
        lengths = [padded_length(len(p)) for p in pieces]
        results: list[np.ndarray | None] = [None] * len(pieces)
        budget = int(self.batch_seconds * SAMPLE_RATE)
        for batch in plan_batches(lengths, budget, min_fill=self.min_batch_fill):
            codes = self._encode_batch([pieces[i] for i in batch], [lengths[i] for i in batch])
            for i, c in zip(batch, codes):
                results[i] = c
        return results  # type: ignore[return-value]

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self._device.type, dtype=self.dtype)

    @torch.inference_mode()
    def _encode_batch(self, waves: list[np.ndarray], lengths: list[int]) -> list[np.ndarray]:
        dev = self._device
        b, nmax = len(waves), max(lengths)
        host = torch.zeros((b, nmax), dtype=torch.float32)
        for i, w in enumerate(waves):
            host[i, : len(w)] = torch.from_numpy(w)
        if dev.type == "cuda":
            host = host.pin_memory()
        batch = host.to(dev, non_blocking=True)
        frames_out = [len(w) // HOP for w in waves]

        features, sem_frames = self._fbank(batch, lengths)
        with self._autocast():
            hidden = self._semantic(features, sem_frames)  # [B, S, 1024]
        semantic = self._semantic_encode(hidden.float().transpose(1, 2), sem_frames)  # [B, 1024, S]
        if self.acoustic_per_clip and b > 1:
            acoustic = torch.zeros((b, 1024, nmax // HOP), dtype=torch.float32, device=dev)
            for i, n in enumerate(lengths):
                emb, _ = self._acoustic(batch[i : i + 1, None, :n].clone(), [n])
                acoustic[i, :, : emb.shape[1]] = emb[0].float().t()
        else:
            acoustic, _ = self._acoustic(batch[:, None, :], lengths)  # [B, F, 1024]
            acoustic = acoustic.float().transpose(1, 2)
        n = min(semantic.shape[-1], acoustic.shape[-1])
        concat = torch.cat([semantic[..., :n], acoustic[..., :n]], dim=1)
        concat = self._fc_prior(concat.transpose(1, 2))  # [B, n, 2048]
        _, indices = self._quantizer(concat.float())
        indices = indices[..., 0].to("cpu").numpy()
        return [indices[i, : frames_out[i]].astype(np.uint16) for i in range(b)]

    def _semantic_encode(self, x: torch.Tensor, frames: list[int]) -> torch.Tensor:
        """SemanticEncoder with each clip's tail zeroed before every convolution, as a lone clip sees it."""
        enc = self._semantic_encoder
        past = None
        if any(f != x.shape[-1] for f in frames):
            past = past_end(x, torch.tensor(frames, device=x.device))

        def mask(t: torch.Tensor) -> torch.Tensor:
            return t if past is None else t.masked_fill_(past, 0)

        h = enc.initial_conv(mask(x.contiguous()))
        # The package's first ReLU is in place: its residual adds relu(h), not h.
        h = F.relu(h)
        relu1, conv1, relu2, conv2 = enc.residual_blocks
        r = conv1(mask(h))
        r = conv2(mask(F.relu(r)))
        return enc.final_conv(mask(r + h))
