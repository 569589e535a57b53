"""Audio decoding and preparation, exactly as DESIGN.md fixes it, so the same file always gives the same tokens:
soundfile to float32 -> mean over channels -> ``soxr.resample(x, sr, 16000, quality="HQ")`` when sr != 16000.

Every way a member can be unusable raises ``AudioError`` with a stable ``kind`` and a readable message.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from gpu_executor.codec import SAMPLE_RATE, SAMPLES_PER_TOKEN

#: Extensions of the members that are decoded (FLAC is the norm; soundfile reads the others too).
AUDIO_EXTENSIONS = frozenset({".flac", ".wav", ".ogg", ".oga", ".opus", ".mp3"})
#: Audio formats that soundfile cannot read: such members are segments, reported as unsupported.
UNSUPPORTED_AUDIO_EXTENSIONS = frozenset({
    ".m4a", ".aac", ".mp4", ".wma", ".webm", ".amr", ".ape", ".wv", ".alac", ".mka", ".3gp", ".spx", ".ac3",
})
_LENGTH_CHECKED_FORMATS = frozenset({"FLAC", "WAV", "WAVEX", "RF64", "W64"})


class AudioError(Exception):
    """A member that cannot become a 16 kHz wave. ``kind``: empty, corrupt, truncated, non_finite, too_short,
    unsupported_format."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class PreparedAudio:
    wave: np.ndarray  # float32, mono, 16 kHz, 1-D
    source_sample_rate: int
    source_channels: int
    source_frames: int

    @property
    def seconds(self) -> float:
        return len(self.wave) / SAMPLE_RATE


def member_kind(name: str) -> str:
    """``audio``, ``unsupported_audio`` or ``other`` from a tar member's name."""
    base = name.rsplit("/", 1)[-1]
    if base.startswith("._"):  # macOS resource forks ride along in tars made on a Mac
        return "other"
    ext = os.path.splitext(base)[1].lower()
    if ext in AUDIO_EXTENSIONS:
        return "audio"
    if ext in UNSUPPORTED_AUDIO_EXTENSIONS:
        return "unsupported_audio"
    return "other"


def segment_id_of(name: str) -> str:
    """The segment id of a member: its file name without folder and without the last extension."""
    return os.path.splitext(name.rsplit("/", 1)[-1])[0]


def _wav_shortfall(data: bytes) -> int:
    """Bytes missing from a RIFF/WAVE ``data`` chunk (libsndfile silently reads what is there)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        if data[pos:pos + 4] == b"data":
            return max(0, size - (len(data) - pos - 8)) if size != 0xFFFFFFFF else 0
        pos += 8 + size + (size & 1)
    return 0


def decode(data: bytes) -> tuple[np.ndarray, int]:
    """Decode audio bytes to float32 ``[frames, channels]`` and the sample rate."""
    if not data:
        raise AudioError("empty", "zero-length member")
    errors = (sf.LibsndfileError, RuntimeError, ValueError, TypeError)
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except errors as exc:
        raise AudioError("corrupt", f"not a readable audio file: {exc}") from exc
    with f:
        declared, fmt, sr = f.frames, f.format, f.samplerate
        try:
            samples = f.read(dtype="float32", always_2d=True)
        except errors as exc:
            raise AudioError("corrupt", f"{fmt} header is fine but the audio data is truncated or damaged "
                                        f"(header declares {declared} frames): {exc}") from exc
    missing = _wav_shortfall(data)
    if missing:
        raise AudioError("truncated", f"WAV data chunk is {missing} bytes short of its declared size "
                                      f"(decoded {samples.shape[0]} frames)")
    if fmt in _LENGTH_CHECKED_FORMATS and 0 < declared != samples.shape[0]:
        raise AudioError("truncated", f"header declares {declared} frames, decoded {samples.shape[0]}")
    return samples, int(sr)


def prepare(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean over channels, then soxr HQ to 16 kHz: the one preparation every encoder path uses."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    mono = np.ascontiguousarray(mono, dtype=np.float32)
    if sample_rate != SAMPLE_RATE and len(mono):
        mono = soxr.resample(mono, sample_rate, SAMPLE_RATE, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_wave(data: bytes) -> PreparedAudio:
    """Decode, check and prepare one member; raises ``AudioError`` for anything that cannot be encoded."""
    samples, sr = decode(data)
    if samples.shape[0] == 0:
        raise AudioError("empty", "no samples")
    if not np.isfinite(samples).all():
        raise AudioError("non_finite", "NaN or Inf samples")
    wave = prepare(samples, sr)
    if len(wave) < SAMPLES_PER_TOKEN:  # shorter clips crash encode_code
        raise AudioError("too_short", f"{len(wave)} samples at 16 kHz, fewer than {SAMPLES_PER_TOKEN}")
    if not np.isfinite(wave).all():
        raise AudioError("non_finite", "NaN or Inf samples after resampling")
    return PreparedAudio(wave, sr, samples.shape[1], samples.shape[0])


def load_wave_file(path: str | os.PathLike[str]) -> PreparedAudio:
    with open(path, "rb") as f:
        return load_wave(f.read())
