"""``NeucodecEncoder``: exact, batched neucodec encoding (fp32 tokens on CPU identical to ``NeuCodec.encode_code``)."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gpu_executor.encoder.acoustic import BatchedCodecEnc, past_end
from gpu_executor.encoder.batching import (
    HOP,
    SAMPLE_RATE,
    padded_length,
    plan_batches,
    plan_chunks,
)
from gpu_executor.encoder.calls import EncodedClips, EncodeStream
from gpu_executor.encoder.fbank import BatchedFbank
from gpu_executor.encoder.fused_activation import fused_activation_available
from gpu_executor.encoder.graphs import BucketedSemantic
from gpu_executor.encoder.loading import (
    SEMANTIC_LAYERS,
    EncoderParts,
    load_parts,
    parts_from_neucodec,
)
from gpu_executor.encoder.precision import (
    PRECISIONS,
    cast_matmul_weights,
    check_cpu_precision,
)
from gpu_executor.encoder.provenance import build_provenance
from gpu_executor.encoder.semantic import SemanticStack
from gpu_executor.encoder.tf32_switch import tf32_mode
from gpu_executor.settings import load_settings

__all__ = ["NeucodecEncoder", "PRECISIONS", "CHUNKING_MODES", "GRAPH_MODES", "default_batch_seconds",
           "check_cpu_precision", "EncodedClips", "EncodeStream"]

CHUNKING_MODES = ("overlap", "seed")
# off: eager; cuda: wav2vec2-bert replayed from CUDA graphs per length bucket; buckets: the same bucket padding run
# eagerly (the CPU form of the graph path, for tests and comparisons).
GRAPH_MODES = ("off", "cuda", "buckets")


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA device (torch {torch.__version__})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        visible = load_settings().cuda_visible_devices
        raise RuntimeError(f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA device(s) "
                           f"(CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)}): indices count "
                           "the visible GPUs only")
    return dev


def device_guard(device: torch.device):
    """Make ``device`` the current CUDA device for a block: streams, events, graph captures and Triton launches
    that take the current device then use the encoder's (``cuda:1`` while the process's current device is 0)."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def default_batch_seconds(device: torch.device) -> float:
    """Padded audio seconds per batch: small on CPU (batching barely helps there), memory-scaled on GPUs."""
    if device.type == "cuda":
        total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        return float(max(60, min(1200, int(total_gib * 8))))
    return 20.0


@dataclass
class _Prepared:
    """A batch on the device up to the fbank: the part a second stream can run ahead."""

    waves: torch.Tensor  # [B, N] zero-padded
    lengths: list[int]  # padded sample counts
    features: torch.Tensor  # [B, S, 160]
    sem_frames: list[int]
    sem_lengths: torch.Tensor  # sem_frames on the device
    frames_out: list[int]  # tokens per clip


@dataclass
class _Launched:
    """A batch whose kernels are queued; its codes (and latents) land in host memory when ``event`` fires."""

    indices: torch.Tensor
    latents: torch.Tensor | None
    frames_out: list[int]
    event: object | None


class NeucodecEncoder:
    """Encode 16 kHz mono float32 clips into 50 Hz neucodec codes (uint16), batched by length.

    Build it with :meth:`from_pretrained` (hub ids or local folders) or :meth:`from_model` (a live
    ``neucodec.NeuCodec``). In ``fp32`` (default) on a CPU the codes equal the package's ``encode_code`` per clip
    (on a GPU, cuDNN rounds a batch and a lone clip differently, so a few codes can differ; README has the figure); ``tf32`` (CUDA) lets
    fp32 matmuls use TF32 tensor cores; ``bf16`` and ``fp16`` run the semantic model (and, on CUDA, the acoustic
    encoder) in that precision with weights cast once at load, the quantizer always in fp32. Clips longer than
    ``max_clip_seconds`` are chunked (their ids are in each call's ``chunked_ids``): ``overlap`` encodes
    ``chunk_seconds`` cores with ``chunk_context_seconds`` of context on each side (dropped after encoding);
    ``seed`` splits every clip longer than ``seed_chunk_seconds`` (30 s) into hard splits encoded on their own,
    reproducing the old fleet's tokens. ``fused_activation`` runs the acoustic encoder's anti-aliased activations
    as two Triton kernels each (CUDA only; default on for bf16/fp16, off for fp32, where it changes the last bits
    of the sums and so a few tokens). ``graphs`` (``GRAPH_MODES``) replays wav2vec2-bert from CUDA graphs per
    length bucket (at most ``max_graphs`` kept); ``overlap_stream`` (CUDA) uploads and runs the fbank of the next
    batch on a second stream while the current batch runs. ``graphs="cuda"`` and ``overlap_stream`` stay opt-in
    until the device check (``bench/gpu_check.sh``) has passed them on a GPU.
    """

    def __init__(self, parts: EncoderParts, *, device: str | torch.device = "auto", precision: str = "fp32",
                 batch_seconds: float | None = None, max_clip_seconds: float = 120.0, chunking: str = "overlap",
                 chunk_seconds: float = 60.0, chunk_context_seconds: float = 10.0, seed_chunk_seconds: float = 30.0,
                 stream_buffer_seconds: float | None = None, min_batch_fill: float | None = None,
                 acoustic_per_clip: bool | None = None, fused_activation: bool | None = None,
                 graphs: str = "off", overlap_stream: bool = False, max_graphs: int = 48) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: choose one of {sorted(PRECISIONS)}")
        if chunking not in CHUNKING_MODES:
            raise ValueError(f"chunking {chunking!r}: choose one of {CHUNKING_MODES}")
        if graphs not in GRAPH_MODES:
            raise ValueError(f"graphs {graphs!r}: choose one of {GRAPH_MODES}")
        if max_clip_seconds <= 0:
            raise ValueError("max_clip_seconds must be positive")
        self._device = resolve_device(device)
        if self._device.type == "cpu":
            check_cpu_precision(precision)
        if self._device.type != "cuda" and (graphs == "cuda" or overlap_stream):
            raise ValueError(f"graphs='cuda' and overlap_stream need a CUDA device; the encoder runs on {self._device}")
        can_fuse = self._device.type == "cuda" and fused_activation_available(self._device)
        if fused_activation and not can_fuse:
            why = (f"the encoder runs on {self._device}" if self._device.type != "cuda"
                   else "Triton cannot be imported (it ships with CUDA builds of torch)")
            raise ValueError(f"fused_activation (NEUCODEC_FUSED_ACTIVATION) needs a CUDA device with Triton: {why}")
        self.fused_activation = bool(can_fuse and precision not in ("fp32", "tf32") if fused_activation is None
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
        self.overlap_stream = bool(overlap_stream)
        self._side_stream = torch.cuda.Stream(self._device) if self.overlap_stream else None

        dev = self._device
        self._fbank = BatchedFbank(parts.feature_extractor, dev)
        semantic = parts.semantic_model
        self.semantic_weights = "fp32"
        if self.dtype != torch.float32:
            # Cast once here instead of on every call under autocast (same numbers, see precision.py). A shared
            # model (from_model) is copied first: the caller's NeuCodec keeps its fp32 weights.
            semantic = copy.deepcopy(semantic) if parts.shared else semantic
            cast_matmul_weights(semantic.to(dev), self.dtype)
            self.semantic_weights = f"{precision} cast at load"
        semantic = semantic.to(dev).eval()
        self._semantic = SemanticStack(semantic, SEMANTIC_LAYERS).eval()
        self.graphs = graphs
        self._semantic_call = self._semantic if graphs == "off" else BucketedSemantic(
            self._semantic, dev, capture=graphs == "cuda",
            max_frames=int(self.max_clip_seconds * SAMPLE_RATE) // HOP + 2, max_graphs=max_graphs,
            autocast=self._autocast)
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
        # The stream overlap and the weight cast change no token; graphs pad to buckets, so they are identity (kept
        # out when off, so that files made before the option existed still count as made the same way).
        self.provenance.update({"semantic_weights": self.semantic_weights,
                                "overlap_stream": "on" if self.overlap_stream else "off"})
        if graphs != "off":
            self.provenance["semantic_graphs"] = graphs

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "neuphonic/neucodec",
                        semantic_model: str | os.PathLike = "facebook/w2v-bert-2.0", **kwargs) -> "NeucodecEncoder":
        """Load from hub ids or local folders in the hub layout; every encoder weight must be in the checkpoint."""
        return cls(load_parts(model, semantic_model), **kwargs)

    @classmethod
    def from_model(cls, neucodec_model: torch.nn.Module, **kwargs) -> "NeucodecEncoder":
        """Wrap an already built ``neucodec.NeuCodec`` (its modules are shared, not modified; low precisions copy
        the semantic model)."""
        return cls(parts_from_neucodec(neucodec_model), **kwargs)

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def graph_stats(self) -> dict[str, int] | None:
        """With ``graphs`` on: graphs captured so far, kept now, and batches run eagerly (larger than every
        bucket); captured beyond kept means evictions. None with ``graphs="off"``."""
        call = self._semantic_call
        if not isinstance(call, BucketedSemantic):
            return None
        return {"captured": call.captures, "kept": len(call.graphs), "eager_batches": call.eager_batches}

    # -- public encoding -----------------------------------------------------------------------------------------
    def encode(self, waves: Sequence[np.ndarray], ids: Sequence[str] | None = None) -> EncodedClips:
        """Codes per clip: ``len(out[i]) == len(waves[i]) // 320``; clips under 320 samples give empty arrays.

        The result is a list with this call's facts (``chunked_ids``, ``batches``, ``encode_seconds``)."""
        t0 = time.perf_counter()
        arrays = [self._check(w, i) for i, w in enumerate(waves)]
        names = [str(x) for x in ids] if ids is not None else [str(i) for i in range(len(arrays))]
        out: list[np.ndarray | None] = [None] * len(arrays)
        limit = int(self.max_clip_seconds * SAMPLE_RATE)
        chunked: list[str] = []
        pieces: list[np.ndarray] = []  # the clips (or chunk windows) actually run through the model
        owners: list[tuple[int, int, int]] = []  # (clip index, keep_from, keep_to) per piece
        for i, w in enumerate(arrays):
            if len(w) < HOP:
                out[i] = np.zeros(0, dtype=np.uint16)
            elif len(w) > limit:
                chunked.append(names[i])
                for c in plan_chunks(len(w), self.chunking, int(self.chunk_seconds * SAMPLE_RATE),
                                     int(self.chunk_context_seconds * SAMPLE_RATE),
                                     int(self.seed_chunk_seconds * SAMPLE_RATE)):
                    pieces.append(w[c.start:c.stop])
                    owners.append((i, c.keep_from, c.keep_to))
            else:
                pieces.append(w)
                owners.append((i, 0, len(w) // HOP))
        codes, _, batches = self._encode_pieces(pieces)
        parts: dict[int, list[np.ndarray]] = {}
        for (i, a, b), c in zip(owners, codes):
            parts.setdefault(i, []).append(c[a:b])
        for i, chunks in parts.items():
            out[i] = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
        return EncodedClips(out, chunked, batches, time.perf_counter() - t0)  # type: ignore[arg-type]

    def encode_stream(self, items: Iterable[tuple[str, np.ndarray]]) -> EncodeStream:
        """``(id, codes)`` in input order, holding at most ~``stream_buffer_seconds`` of audio at once; the returned
        iterator carries this stream's facts (``chunked_ids``, ``encode_seconds``, ...)."""
        return EncodeStream(self.encode, items, int(self.stream_buffer_seconds * SAMPLE_RATE), SAMPLE_RATE)

    def encode_latents(self, waves: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The quantizer's input per clip, ``[len // 320, 2048]`` float32: the pre-quantization latent whose error
        measures a fast precision even on random weights. Clips must be 320 samples up to the whole-clip limit."""
        arrays = [self._check(w, i) for i, w in enumerate(waves)]
        limit = int(self.max_clip_seconds * SAMPLE_RATE)
        for i, w in enumerate(arrays):
            if not HOP <= len(w) <= limit:
                raise ValueError(f"clip {i}: encode_latents takes clips of {HOP} samples up to the whole-clip limit")
        _, latents, _ = self._encode_pieces(arrays, latents=True)
        return latents  # type: ignore[return-value]

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

    def _encode_pieces(self, pieces: list[np.ndarray], latents: bool = False
                       ) -> tuple[list[np.ndarray], list[np.ndarray] | None, int]:
        """Codes (and latents) per piece, and the number of batches. Batch i+1 is prepared (uploaded, fbank) before
        batch i's codes are collected, so with a second stream the host and copies overlap the GPU's work."""
        if not pieces:
            return [], ([] if latents else None), 0
        lengths = [padded_length(len(p)) for p in pieces]
        codes: list[np.ndarray | None] = [None] * len(pieces)
        lats: list[np.ndarray | None] = [None] * len(pieces)
        budget = int(self.batch_seconds * SAMPLE_RATE)
        plan = plan_batches(lengths, budget, min_fill=self.min_batch_fill)
        pending: tuple[list[int], _Launched] | None = None
        with torch.inference_mode(), device_guard(self._device), tf32_mode(self._device, self.precision == "tf32"):
            for batch in plan:
                prepared = self._prepare([pieces[i] for i in batch], [lengths[i] for i in batch])
                launched = (batch, self._launch(prepared, latents))
                if pending is not None:
                    self._collect(*pending, codes, lats)
                pending = launched
            self._collect(*pending, codes, lats)  # type: ignore[misc]
        return codes, (lats if latents else None), len(plan)  # type: ignore[return-value]

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        # No cast cache: the weights are cast at load already, and a cache must stay off while a CUDA graph captures.
        return torch.autocast(self._device.type, dtype=self.dtype, cache_enabled=False)

    def _prepare(self, waves: list[np.ndarray], lengths: list[int]) -> _Prepared:
        dev = self._device
        side = self._side_stream
        with torch.cuda.stream(side) if side is not None else nullcontext():
            b, nmax = len(waves), max(lengths)
            host = torch.zeros((b, nmax), dtype=torch.float32)
            for i, w in enumerate(waves):
                host[i, : len(w)] = torch.from_numpy(w)
            if dev.type == "cuda":
                host = host.pin_memory()
            batch = host.to(dev, non_blocking=True)
            features, sem_frames = self._fbank(batch, lengths)
            sem_host = torch.tensor(sem_frames)
            sem_lengths = (sem_host.pin_memory() if dev.type == "cuda" else sem_host).to(dev, non_blocking=True)
        if side is not None:
            main = torch.cuda.current_stream(dev)
            main.wait_stream(side)
            for t in (batch, features, sem_lengths):
                t.record_stream(main)  # made on the side stream, used and freed on the main one
        return _Prepared(batch, lengths, features, sem_frames, sem_lengths, [len(w) // HOP for w in waves])

    def _launch(self, p: _Prepared, latents: bool) -> _Launched:
        """Queue the model on a prepared batch; the codes are copied to (pinned) host memory without waiting."""
        dev = self._device
        b, nmax = p.waves.shape
        with self._autocast():
            if self._semantic_call is not self._semantic:
                hidden = self._semantic_call(p.features, p.sem_frames, p.sem_lengths)
            elif all(n == p.features.shape[1] for n in p.sem_frames):
                hidden = self._semantic(p.features, p.sem_frames)  # [B, S, 1024], no padding: no mask
            else:  # the mask from lengths already on the device: no blocking copy behind the previous batch
                hidden = self._semantic.forward_lengths(p.features, p.sem_lengths)
        semantic = self._semantic_encode(hidden.float().transpose(1, 2), p.sem_frames, p.sem_lengths)
        if self.acoustic_per_clip and b > 1:
            acoustic = torch.zeros((b, 1024, nmax // HOP), dtype=torch.float32, device=dev)
            for i, n in enumerate(p.lengths):
                emb, _ = self._acoustic(p.waves[i : i + 1, None, :n].clone(), [n])
                acoustic[i, :, : emb.shape[1]] = emb[0].float().t()
        else:
            acoustic, _ = self._acoustic(p.waves[:, None, :], p.lengths)  # [B, F, 1024]
            acoustic = acoustic.float().transpose(1, 2)
        n = min(semantic.shape[-1], acoustic.shape[-1])
        concat = torch.cat([semantic[..., :n], acoustic[..., :n]], dim=1)
        concat = self._fc_prior(concat.transpose(1, 2)).float()  # [B, n, 2048]: the pre-quantization latent
        _, indices = self._quantizer(concat)
        indices = indices[..., 0]
        lat = concat if latents else None
        if dev.type != "cuda":
            return _Launched(indices, lat, p.frames_out, None)
        host_idx = torch.empty(indices.shape, dtype=indices.dtype, pin_memory=True)
        host_idx.copy_(indices, non_blocking=True)
        host_lat = None
        if lat is not None:
            host_lat = torch.empty(lat.shape, dtype=lat.dtype, pin_memory=True)
            host_lat.copy_(lat, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(dev))  # the copies' stream: the engine's device, not device 0's
        return _Launched(host_idx, host_lat, p.frames_out, event)

    @staticmethod
    def _collect(batch: list[int], launched: _Launched, codes: list, lats: list) -> None:
        if launched.event is not None:
            launched.event.synchronize()
        indices = launched.indices.numpy()
        for k, (i, frames) in enumerate(zip(batch, launched.frames_out)):
            codes[i] = indices[k, :frames].astype(np.uint16)
            if launched.latents is not None:
                lats[i] = launched.latents[k, :frames].numpy().copy()

    def _semantic_encode(self, x: torch.Tensor, frames: list[int], lengths: torch.Tensor) -> torch.Tensor:
        """SemanticEncoder with each clip's tail zeroed before every convolution, as a lone clip sees it."""
        enc = self._semantic_encoder
        past = None
        if any(f != x.shape[-1] for f in frames):
            past = past_end(x, lengths)

        def mask(t: torch.Tensor) -> torch.Tensor:
            return t if past is None else t.masked_fill_(past, 0)

        h = enc.initial_conv(mask(x.contiguous()))
        # The package's first ReLU is in place: its residual adds relu(h), not h.
        h = F.relu(h)
        relu1, conv1, relu2, conv2 = enc.residual_blocks
        r = conv1(mask(h))
        r = conv2(mask(F.relu(r)))
        return enc.final_conv(mask(r + h))
