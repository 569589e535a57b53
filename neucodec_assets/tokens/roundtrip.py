"""Decode round-trip quality of an encoded shard: "decode it back and listen", recorded with every materialization.

While a shard encodes, ``RoundtripSample`` keeps the waves (from the shard reader, the same 16 kHz audio the encoder
got) and the codes of a seeded sample of its segments (``NEUCODEC_ROUNDTRIP_SAMPLES``, default 4; 0 turns it off).
After the tokens file is uploaded, ``roundtrip_for_shard`` decodes them with the neucodec package's own decoder
(``gpu_executor.codec.decoder``: ``NeuCodec.decode_code``), compares each with its source at 16 kHz
(``gpu_executor.codec.quality``: STOI, wide-band PESQ, SI-SDR, log-mel distance), writes listenable pairs to
``<shard>/roundtrip/<segment_id>.source.wav`` / ``.decoded.wav`` (16 kHz PCM_16) and returns the materialization
metadata entries (``roundtrip_*``).

The decoder is loaded lazily, once per process (a run) and model folder, from the folder the encoder was loaded from,
on the encoder's device: runs with the feature off never load it. Figures made with random weights are labelled
(``roundtrip_random_weights``) and nothing here ever fails a shard on a figure: a round trip that cannot run is
logged and recorded as ``roundtrip_error``, the tokens file stands.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import dagster as dg
import numpy as np

from gpu_executor.codec import SAMPLE_RATE
from gpu_executor.settings import load_settings

__all__ = ["RANDOM_NOTE", "roundtrip_samples", "sample_ids",
           "RoundtripSample", "roundtrip_for_shard", "decoder_for", "roundtrip_key", "wav_bytes",
           "decode_and_score", "RoundtripPair"]

RANDOM_NOTE = ("made with randomly initialized weights: the decoded audio is noise and the figures say nothing about "
               "neucodec's quality; no threshold applies")
FIGURES = ("stoi", "pesq", "si_sdr", "mel_distance")

Log = Callable[[str], None]


def roundtrip_samples() -> int:
    """Segments per shard to round-trip (``NEUCODEC_ROUNDTRIP_SAMPLES``; 0 turns it off), read now."""
    return load_settings().roundtrip_samples


def sample_ids(segment_ids: Iterable[str], k: int, seed: str) -> list[str]:
    """``k`` ids drawn without replacement, seeded by ``seed`` (the shard prefix): the same shard always gives the
    same sample, whatever the order of its tar. Returned in sorted order."""
    ids = sorted(set(segment_ids))
    if k <= 0 or not ids:
        return []
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "little"))
    return sorted(ids[i] for i in rng.choice(len(ids), size=min(k, len(ids)), replace=False))


def roundtrip_key(prefix: str, segment_id: str, which: str) -> str:
    return f"{prefix.rstrip('/')}/roundtrip/{segment_id}.{which}.wav"


def wav_bytes(wave: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV (soundfile), clipped to [-1, 1]."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0), sr, subtype="PCM_16", format="WAV")
    return buf.getvalue()


@dataclass
class RoundtripSample:
    """The sampled segments of one shard: their 16 kHz waves and their codes, kept while the shard encodes."""

    prefix: str
    ids: list[str]
    waves: dict[str, np.ndarray] = field(default_factory=dict)
    codes: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def for_shard(cls, reader, samples: int | None = None) -> "RoundtripSample | None":
        """The sample of an opened shard reader; None when the round trip is off (0 samples)."""
        k = roundtrip_samples() if samples is None else int(samples)
        if k <= 0:
            return None
        return cls(reader.prefix, sample_ids(reader.segment_ids, k, reader.prefix))

    def keep_wave(self, segment_id: str, wave: np.ndarray) -> None:
        if segment_id in self.ids:
            self.waves[segment_id] = wave

    def keep_codes(self, segment_id: str, codes: np.ndarray) -> None:
        if segment_id in self.ids:
            self.codes[segment_id] = np.asarray(codes)

    def pairs(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(id, wave, codes) of the sampled segments that were encoded (failed or empty ones drop out)."""
        return [(s, self.waves[s], self.codes[s]) for s in self.ids
                if s in self.waves and s in self.codes and len(self.codes[s]) > 0]


# -- the decoder, once per process and model folder ------------------------------------------------------------------

_DECODER_LOCK = threading.Lock()
_DECODERS: dict[tuple[str, str], object] = {}


def _model_folder(settings) -> str:
    if settings.is_random:
        from gpu_executor.codec.random_model import cached_random_model

        return str(cached_random_model().model_dir)
    return settings.model


def decoder_for(loaded):
    """The package's decoder for a LoadedEncoder's model, on its device; loaded on first use, kept per process."""
    from gpu_executor.codec.decoder import NeucodecDecoder

    key = (_model_folder(loaded.settings), str(loaded.encoder.device))
    with _DECODER_LOCK:
        decoder = _DECODERS.get(key)
        if decoder is None:
            _DECODERS.clear()  # one decoder in memory at a time
            decoder = NeucodecDecoder.from_pretrained(key[0], device=key[1])
            _DECODERS[key] = decoder
        return decoder


@dataclass(frozen=True)
class RoundtripPair:
    segment_id: str
    source: np.ndarray  # 16 kHz, trimmed to the decoded length
    decoded: np.ndarray  # 16 kHz
    figures: object  # gpu_executor.codec.quality.QualityFigures


def decode_and_score(decoder, items: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> list[RoundtripPair]:
    """Decode each (id, source wave, codes) and score it against its source at 16 kHz."""
    from gpu_executor.codec.quality import quality_figures

    out = []
    for segment_id, wave, codes in items:
        decoded = decoder.decode_16k(codes)
        n = min(len(decoded), len(wave))
        source = np.asarray(wave[:n], dtype=np.float32)
        out.append(RoundtripPair(segment_id, source, decoded[:n], quality_figures(source, decoded[:n])))
    return out


def _is_random(loaded) -> bool:
    return bool(getattr(loaded.settings, "is_random", False)) or \
        str(loaded.provenance.get("random_weights", "")).lower() == "true"


def roundtrip_for_shard(sample: RoundtripSample | None, target, loaded, log: Log, *,
                        encode_seconds: float | None = None) -> dict[str, object]:
    """Decode the sample, score it, upload the WAV pairs under ``<shard>/roundtrip/`` and return the metadata
    entries for the shard's materialization (empty when the feature is off or nothing was sampled). Never raises
    for a decoding or scoring problem: it is logged and recorded as ``roundtrip_error``."""
    if sample is None:
        return {}
    items = sample.pairs()
    if not items:
        return {"roundtrip_segments": dg.MetadataValue.int(0)}
    start = time.perf_counter()
    random_weights = _is_random(loaded)
    try:
        pairs = decode_and_score(decoder_for(loaded), items)
        keys: dict[str, dict[str, str]] = {}
        for pair in pairs:
            for which, wave in (("source", pair.source), ("decoded", pair.decoded)):
                key = roundtrip_key(sample.prefix, pair.segment_id, which)
                target.put_bytes(key, wav_bytes(wave))
                keys.setdefault(pair.segment_id, {})[which] = key
    except Exception as exc:  # noqa: BLE001 - quality figures never fail a shard whose tokens are written
        log(f"{sample.prefix}: round trip failed ({type(exc).__name__}: {exc}); the tokens file stands")
        return {"roundtrip_error": f"{type(exc).__name__}: {exc}"}
    seconds = time.perf_counter() - start
    from gpu_executor.codec.quality import mean_figures

    means = mean_figures([p.figures for p in pairs])
    meta: dict[str, object] = {"roundtrip_segments": dg.MetadataValue.int(len(pairs))}
    for name in FIGURES:
        if means[name] is not None:
            meta[f"roundtrip_{name}"] = dg.MetadataValue.float(round(means[name], 4))
    meta["roundtrip_pairs"] = dg.MetadataValue.table(
        records=[dg.TableRecord({"segment_id": p.segment_id,
                                 **{n: (round(v, 4) if v is not None else None) for n, v in p.figures.as_dict().items()},
                                 "source_key": keys[p.segment_id]["source"],
                                 "decoded_key": keys[p.segment_id]["decoded"]}) for p in pairs],
        schema=dg.TableSchema(columns=[
            dg.TableColumn("segment_id", "string"), *[dg.TableColumn(n, "float") for n in FIGURES],
            dg.TableColumn("source_key", "string"), dg.TableColumn("decoded_key", "string")]),
    )
    meta["roundtrip_wav_prefix"] = f"{sample.prefix.rstrip('/')}/roundtrip/"
    meta["roundtrip_seconds"] = dg.MetadataValue.float(round(seconds, 3))
    if encode_seconds:
        meta["roundtrip_share_of_encode"] = dg.MetadataValue.float(round(seconds / encode_seconds, 5))
    meta["roundtrip_random_weights"] = dg.MetadataValue.bool(random_weights)
    if random_weights:
        meta["roundtrip_note"] = RANDOM_NOTE
    shown = ", ".join(f"{n} {means[n]:.3f}" for n in FIGURES if means[n] is not None)
    log(f"{sample.prefix}: round trip of {len(pairs)} segments in {seconds:.2f} s: {shown}"
        f"{' (random weights)' if random_weights else ''}; listen under {meta['roundtrip_wav_prefix']}")
    return meta


def figures_from_metadata(metadata: Mapping[str, object]) -> dict[str, float]:
    """The ``roundtrip_*`` means recorded in a materialization's metadata (plain floats; absent ones left out)."""
    out = {}
    for name in FIGURES:
        entry = metadata.get(f"roundtrip_{name}")
        value = getattr(entry, "value", entry)
        if isinstance(value, (int, float)):
            out[name] = float(value)
    return out
