"""Dagster resources: the shard bucket and the neucodec encoder.

A field left unset takes its setting (``gpu_executor.settings``) when a run starts, not when the code location
loads, so the run worker's environment is what counts; values set in run config or the UI win over both.
The encoder is heavy (seconds to load, gigabytes of weights): it is loaded lazily, once per process and settings,
so a run that encodes many shards loads it once and a run that only re-checks files never loads it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from gpu_executor.settings import default_of, load_settings

if TYPE_CHECKING:
    from resources.bucket import Bucket

DEFAULT_MODEL = default_of("model")
RANDOM_MODEL = "random"
RANDOM_LABEL = "random (randomly initialized full-size neucodec architecture; tokens are meaningless)"


class BucketResource(dg.ConfigurableResource):
    """Where shards live: ``s3://BUCKET[/PREFIX]`` or ``file:///ABS/PATH``; unset means ``$NEUCODEC_BUCKET``."""

    url: str | None = Field(
        default=None,
        description="Bucket URL; unset: the NEUCODEC_BUCKET environment variable (else the embedded local folder).",
    )

    def open(self) -> Bucket:
        from resources.bucket import open_bucket

        return open_bucket(self.url or None)


@dataclass(frozen=True)
class EncoderSettings:
    """The resolved encoder configuration; it identifies a loaded encoder in the per-process cache."""

    model: str
    semantic_model: str
    device: str
    precision: str
    batch_seconds: float | None
    max_clip_seconds: float | None
    chunking: str | None
    stream_buffer_seconds: float | None = None
    fused_activation: bool | None = None

    @property
    def is_random(self) -> bool:
        return self.model == RANDOM_MODEL


ENCODER_FIELDS = tuple(f.name for f in fields(EncoderSettings))


@dataclass
class LoadedEncoder:
    """An encoder ready to use, with the provenance and device description the platform records."""

    encoder: Any  # gpu_executor.encoder.NeucodecEncoder (kept untyped: importing it pulls in torch)
    settings: EncoderSettings
    provenance: dict[str, str]
    device: str
    model_label: str
    load_seconds: float


_CACHE_LOCK = threading.Lock()
_CACHE: dict[EncoderSettings, LoadedEncoder] = {}


def check_cuda_device(device: str) -> None:
    """Fail in seconds, before minutes of weight loading, when a CUDA device is asked for but unusable: a GPU pod
    (NEUCODEC_DEVICE=cuda) without a working GPU must never fall back to encoding on the CPU."""
    if not device.startswith("cuda"):
        return
    import socket

    import torch

    index = torch.device(device).index or 0
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index < count:
        return
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    seen = load_settings()
    raise RuntimeError(
        f"NEUCODEC_DEVICE={device!r} but torch {torch.__version__} ({build}) sees {count} usable CUDA device(s) on "
        f"{socket.gethostname()} (CUDA_VISIBLE_DEVICES={seen.cuda_visible_devices!r}, "
        f"NVIDIA_VISIBLE_DEVICES={seen.nvidia_visible_devices!r}). On Kubernetes this pod got no GPU: "
        "check its nvidia.com/gpu limit (the run's dagster-k8s/config tag) and the node's NVIDIA driver and device "
        "plugin; the image needs a CUDA build of torch. Not falling back to the CPU."
    )


def load_encoder(settings: EncoderSettings) -> LoadedEncoder:
    """Load (or reuse) the encoder for ``settings``; the process keeps only the most recent one."""
    import time

    with _CACHE_LOCK:
        cached = _CACHE.get(settings)
        if cached is not None:
            return cached
        _CACHE.clear()  # one model in memory at a time: the next one needs the room
        check_cuda_device(settings.device)
        from gpu_executor.encoder import NeucodecEncoder

        model, semantic_model = settings.model, settings.semantic_model
        if settings.is_random:
            from gpu_executor.codec.random_model import cached_random_model

            dirs = cached_random_model()
            model, semantic_model = str(dirs.model_dir), str(dirs.semantic_model_dir)
        kwargs: dict[str, Any] = {"device": settings.device, "precision": settings.precision}
        for name in ("batch_seconds", "max_clip_seconds", "chunking", "stream_buffer_seconds", "fused_activation"):
            value = getattr(settings, name)
            if value is not None:
                kwargs[name] = value
        start = time.perf_counter()
        encoder = NeucodecEncoder.from_pretrained(model=model, semantic_model=semantic_model, **kwargs)
        load_seconds = time.perf_counter() - start
        device = str(encoder.device)
        if device.startswith("cuda"):
            import torch

            index = torch.device(device).index
            device = f"{device} ({torch.cuda.get_device_name(index if index is not None else 0)})"
        provenance = {str(k): str(v) for k, v in dict(encoder.provenance).items()}
        if settings.is_random:
            provenance["weights"] = RANDOM_LABEL
            provenance["model_requested"] = RANDOM_MODEL
        label = RANDOM_LABEL if settings.is_random else settings.model
        loaded = LoadedEncoder(
            encoder=encoder, settings=settings, provenance=provenance, device=device,
            model_label=label, load_seconds=load_seconds,
        )
        _CACHE[settings] = loaded
        return loaded


def unload_encoders() -> None:
    """Drop the loaded encoder of this process (its weights are freed once nothing else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


class EncoderResource(dg.ConfigurableResource):
    """The neucodec encoder; an unset field takes its ``NEUCODEC_*`` setting when the run starts.

    ``model="random"`` (``NEUCODEC_MODEL=random``) uses a cached randomly initialized model of the real
    architecture; provenance and outputs label it as random.
    """

    model: str | None = Field(default=None, description="hub id, local folder, or 'random' (NEUCODEC_MODEL)")
    semantic_model: str | None = Field(default=None, description="wav2vec2-bert hub id or folder")
    device: str | None = Field(default=None, description="auto, cpu, cuda, cuda:N (NEUCODEC_DEVICE)")
    precision: str | None = Field(default=None, description="fp32 (exact), bf16, fp16 (NEUCODEC_PRECISION)")
    batch_seconds: float | None = Field(default=None, description="audio seconds per batch (NEUCODEC_BATCH_SECONDS)")
    max_clip_seconds: float | None = Field(
        default=None, description="whole-clip limit before chunking (NEUCODEC_MAX_CLIP_SECONDS)"
    )
    chunking: str | None = Field(default=None, description="chunking mode for long clips (NEUCODEC_CHUNKING)")
    stream_buffer_seconds: float | None = Field(
        default=None, description="audio seconds held per encode call while streaming a shard "
        "(NEUCODEC_STREAM_BUFFER_SECONDS; also how often progress can be reported)",
    )
    fused_activation: bool | None = Field(
        default=None, description="CUDA: run the acoustic encoder's activations as Triton kernels (default: on for "
        "bf16/fp16, off for fp32; NEUCODEC_FUSED_ACTIVATION)",
    )

    def settings(self) -> EncoderSettings:
        """The fields set here, else the settings in this process's environment (read now)."""
        env = load_settings()
        picked = {name: getattr(self, name) if getattr(self, name) not in (None, "") else getattr(env, name)
                  for name in ENCODER_FIELDS}
        return EncoderSettings(**picked)

    def load(self) -> LoadedEncoder:
        """The encoder for these settings, loaded once per process."""
        return load_encoder(self.settings())

