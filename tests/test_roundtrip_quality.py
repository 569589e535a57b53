"""Decode round-trip quality (issue 12, items 2, 3 and their part of 5).

- the metric functions on known signals: identical audio scores best, white noise scores worse, monotonically in
  the noise level (real espeak-ng speech, 16 kHz);
- the round trip of a shard of real espeak-ng speech through the full-size random model on the CPU: the package's
  decoder, WAV pairs in the bucket (readable, 16 kHz PCM_16), figures in the shard's metadata, labelled random;
  turned off by NEUCODEC_ROUNDTRIP_SAMPLES=0 without loading the decoder;
- compare-precision on the CPU: the fp32 column for real and the engine's refusal of bf16 and tf32, said clearly.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import soxr

from gpu_executor.codec import quality
from neucodec_assets.tokens import roundtrip
from neucodec_assets.tokens.metadata import metadata_value, tokens_key
from resources.bucket import LocalBucket
from resources.dagster_resources import EncoderResource, LoadedEncoder
from resources.sample_bucket import espeak
from resources.shard_reader import read_shard
from tests.fixtures.platform import copy_tiny_shards


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    samples, sr = espeak("The weather is pleasant today, and we will meet at the station tomorrow morning.", "en")
    wave = soxr.resample(samples.astype(np.float32), sr, 16_000, quality="HQ").astype(np.float32)
    return 0.5 * wave / np.abs(wave).max()


def noisy(wave: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(wave.size)
    noise *= np.sqrt(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise ** 2) / 10 ** (snr_db / 10))
    return (wave + noise).astype(np.float32)


def test_metrics_identical_audio_scores_best_and_noise_scores_worse_monotonically(speech):
    same = quality.quality_figures(speech, speech.copy())
    assert same.stoi > 0.999
    assert same.pesq is not None and same.pesq > 4.5  # 4.64 is the top of the wide-band scale
    assert same.si_sdr > 60
    assert same.mel_distance == pytest.approx(0.0, abs=1e-9)

    snrs = [30, 20, 10, 0]
    figs = [quality.quality_figures(speech, noisy(speech, snr)) for snr in snrs]
    stoi = [same.stoi] + [f.stoi for f in figs]
    pesq = [same.pesq] + [f.pesq for f in figs]
    si_sdr = [same.si_sdr] + [f.si_sdr for f in figs]
    mel = [same.mel_distance] + [f.mel_distance for f in figs]
    assert all(a > b for a, b in zip(stoi, stoi[1:])), stoi
    assert all(a > b for a, b in zip(pesq, pesq[1:])), pesq
    assert all(a > b for a, b in zip(si_sdr, si_sdr[1:])), si_sdr
    assert all(a < b for a, b in zip(mel, mel[1:])), mel
    # SI-SDR of white noise added at a known SNR is that SNR (the noise is orthogonal to the speech)
    for snr, f in zip(snrs, figs):
        assert f.si_sdr == pytest.approx(snr, abs=0.5)
    # scale invariance: a louder copy is as good as the original for SI-SDR
    assert quality.si_sdr(speech, 2.0 * speech) > 60


def test_metrics_trim_to_the_shorter_signal_and_pesq_gives_none_without_speech(speech):
    # the decoder returns len // 320 frames: a shorter decoded clip is compared over its length
    assert quality.si_sdr(speech, speech[: len(speech) - 100]) > 60
    silence = np.zeros(16_000, dtype=np.float32)
    assert quality.pesq_wb(silence, silence) is None
    means = quality.mean_figures([quality.QualityFigures(0.5, None, 1.0, 2.0), quality.QualityFigures(0.7, 3.0, 3.0, 4.0)])
    assert means == pytest.approx({"stoi": 0.6, "pesq": 3.0, "si_sdr": 2.0, "mel_distance": 3.0})


def test_sample_is_seeded_by_the_shard_and_independent_of_tar_order():
    ids = [f"seg_{i:03d}" for i in range(50)]
    first = roundtrip.sample_ids(ids, 4, "ds/en/shard_1")
    assert len(first) == 4 and set(first) <= set(ids) and first == sorted(first)
    assert roundtrip.sample_ids(list(reversed(ids)), 4, "ds/en/shard_1") == first
    assert roundtrip.sample_ids(ids, 4, "ds/en/shard_2") != first
    assert roundtrip.sample_ids(ids[:3], 4, "x") == ids[:3]
    assert roundtrip.sample_ids(ids, 0, "x") == []


@pytest.fixture(scope="module")
def loaded() -> LoadedEncoder:
    """The full-size random model on the CPU in exact fp32 (cached on disk; the process keeps one)."""
    return EncoderResource(model="random", device="cpu", precision="fp32").load()


def test_roundtrip_of_real_speech_through_the_random_model(loaded, tiny_shards_dir, tmp_path, monkeypatch):
    from gpu_executor.codec.neucodec_compat import import_neucodec
    from neucodec_assets.tokens.encoding import encode_shard

    bucket = LocalBucket(tmp_path / "bucket")
    shards = copy_tiny_shards(tiny_shards_dir, bucket, count=2)
    lines: list[str] = []

    # off: no round trip, and the decoder is never loaded
    monkeypatch.setenv("NEUCODEC_ROUNDTRIP_SAMPLES", "0")
    roundtrip._DECODERS.clear()
    with read_shard(bucket, shards[1].prefix) as reader:
        off = encode_shard(reader, bucket, loaded, tmp_path / "work", lines.append)
    assert not [k for k in off.figures.to_metadata() if k.startswith("roundtrip")]
    assert roundtrip._DECODERS == {}
    assert not list(bucket.list_keys(f"{shards[1].prefix}/roundtrip/"))

    monkeypatch.setenv("NEUCODEC_ROUNDTRIP_SAMPLES", "2")
    prefix = shards[0].prefix
    with read_shard(bucket, prefix) as reader:
        source_waves = {s.segment_id: s.wave for s in reader.segments()}
    with read_shard(bucket, prefix) as reader:
        result = encode_shard(reader, bucket, loaded, tmp_path / "work", lines.append)
    meta = result.figures.to_metadata()
    assert bucket.exists(tokens_key(prefix))  # the tokens file is written as before
    assert metadata_value(meta, "roundtrip_segments") == 2
    for name in ("stoi", "pesq", "si_sdr", "mel_distance"):
        value = metadata_value(meta, f"roundtrip_{name}")
        assert isinstance(value, float) and np.isfinite(value), (name, value)
    assert 0.0 <= metadata_value(meta, "roundtrip_stoi") <= 1.0
    assert 1.0 <= metadata_value(meta, "roundtrip_pesq") <= 4.7
    assert metadata_value(meta, "roundtrip_mel_distance") > 0
    assert metadata_value(meta, "roundtrip_random_weights") is True
    assert "random" in metadata_value(meta, "roundtrip_note")
    assert metadata_value(meta, "roundtrip_seconds") > 0
    assert metadata_value(meta, "roundtrip_share_of_encode") > 0

    # the decoder is the package's own decode_code, loaded once for the process
    assert len(roundtrip._DECODERS) == 1
    decoder = next(iter(roundtrip._DECODERS.values()))
    assert decoder._decode_code is import_neucodec().NeuCodec.decode_code

    rows = metadata_value(meta, "roundtrip_pairs").records
    assert sorted(r.data["segment_id"] for r in rows) == sorted(source_waves)  # both tiny segments sampled
    for row in rows:
        sid = row.data["segment_id"]
        assert row.data["source_key"] == f"{prefix}/roundtrip/{sid}.source.wav"
        assert row.data["decoded_key"] == f"{prefix}/roundtrip/{sid}.decoded.wav"
        src, sr = sf.read(io.BytesIO(bucket.read_bytes(row.data["source_key"])), dtype="float32")
        dec, sr2 = sf.read(io.BytesIO(bucket.read_bytes(row.data["decoded_key"])), dtype="float32")
        info = sf.info(io.BytesIO(bucket.read_bytes(row.data["decoded_key"])))
        assert sr == sr2 == 16_000 and info.subtype == "PCM_16" and info.format == "WAV"
        frames = len(source_waves[sid]) // 320
        assert len(src) == len(dec) == frames * 320
        # the source WAV is the reader's wave (to 16-bit precision); the decoded one is not silence
        np.testing.assert_allclose(src, source_waves[sid][: len(src)], atol=1 / 32768 + 1e-6)
        assert np.abs(dec).max() > 1e-3
    assert any("round trip of 2 segments" in line and "random weights" in line for line in lines)


def test_compare_precision_on_the_cpu(loaded, tiny_shards_dir, tmp_path, capsys):
    """fp32 runs for real; bf16 (no native support on this CPU) and tf32 (CUDA only) are refused with a clear note."""
    from gpu_executor.encoder.precision import check_cpu_precision
    from neucodec_assets.cli import main

    bucket = LocalBucket(tmp_path / "bucket")
    prefix = copy_tiny_shards(tiny_shards_dir, bucket, count=1)[0].prefix
    base = ["compare-precision", "--partition", prefix, "--samples", "2", "--bucket", bucket.url,
            "--model", "random", "--device", "cpu"]
    assert main(base + ["--precision", "tf32"]) == 0
    out = capsys.readouterr().out
    assert "tf32 refused on this machine's CPU" in out and "CUDA tensor-core mode" in out
    assert "NEUCODEC_DEVICE=cuda" in out
    table = [line for line in out.splitlines() if line.startswith(("fp32 ", "tf32 "))]
    assert len(table) == 1 and table[0].split()[1] == "reference"
    assert all(v != "n/a" for v in table[0].split()[2:6])  # STOI, PESQ, SI-SDR, log-mel of the fp32 decode
    assert "randomly initialized weights" in out

    try:
        check_cpu_precision("bf16")
        bf16_runs = True
    except ValueError:
        bf16_runs = False
    assert main(base + ["--precision", "bf16", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["requested"] == "bf16" and report["random_weights"] is True
    assert len(report["segment_ids"]) == 2 and report["columns"][0]["precision"] == "fp32"
    if bf16_runs:  # a CPU with native bf16 (AMX/AVX512-BF16): the comparison runs
        assert report["note"] is None and report["columns"][1]["precision"] == "bf16"
        assert 0.0 <= report["columns"][1]["token_agreement"] <= 1.0
    else:
        assert len(report["columns"]) == 1
        assert "bf16 refused" in report["note"] and "no native bf16" in report["note"]
    # fp32 against itself is no comparison: argparse refuses it
    with pytest.raises(SystemExit):
        main(base + ["--precision", "fp32"])
