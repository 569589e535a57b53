"""Frame counts, clips under 320 samples, silence, chunking of long clips, streaming, provenance."""

from __future__ import annotations

import numpy as np
import pytest

from gpu_executor.encoder import NeucodecEncoder
from tests.fixtures.model import TEST_DEVICE, assert_diverse, reference_codes


@pytest.fixture(scope="module")
def speech(speech_clips):
    return {c.clip_id: c.wave for c in speech_clips}


def test_frame_counts_short_clips_and_silence(random_encoder, reference_codec, speech, speech_reference_codes):
    talk = speech["s2500"]
    lengths = [0, 1, 80, 319, 320, 321, 639, 640, 641]
    waves = [talk[:n] for n in lengths] + [np.zeros(16000, np.float32), talk]
    out = random_encoder.encode(waves)
    for n, codes in zip(lengths, out):
        assert codes.dtype == np.uint16 and len(codes) == n // 320
    for n in (0, 1, 80, 319):
        assert out[lengths.index(n)].size == 0
    # Short clips, silence and speech through the same ragged batch equal encode_code clip by clip.
    compared = []
    for wave, codes in zip(waves[:-1], out[:-1]):
        if len(wave) >= 320:
            ref = reference_codes(reference_codec, wave)
            np.testing.assert_array_equal(codes, ref)
            compared.append(ref)
    np.testing.assert_array_equal(out[-1], speech_reference_codes["s2500"])
    assert len(out[-2]) == 50  # one second of silence
    assert_diverse(compared + [out[-1]])


def test_non_finite_and_multichannel_inputs_are_rejected(random_encoder):
    with pytest.raises(ValueError, match="NaN or infinite"):
        random_encoder.encode([np.array([0.0, np.nan] * 400, np.float32)])
    with pytest.raises(ValueError, match="1-D"):
        random_encoder.encode([np.zeros((2, 1000), np.float32)])


def test_overlap_chunking_of_a_long_clip(random_model_dirs, reference_codec, speech, speech_reference_codes):
    wave = speech["s3300"]
    enc = NeucodecEncoder.from_pretrained(
        random_model_dirs.model_dir, random_model_dirs.semantic_model_dir, device=TEST_DEVICE,
        max_clip_seconds=1.5, chunk_seconds=1.0, chunk_context_seconds=0.3, chunking="overlap",
    )
    out = enc.encode([speech["s0900"], wave], ids=["short", "long"])
    assert out.chunked_ids == ["long"] and out.batches >= 2  # facts of this call, not state on the encoder
    assert not hasattr(enc, "chunked_ids")
    assert enc.provenance["chunking"] == "overlap" and enc.provenance["max_clip_seconds"] == "1.5"
    assert len(out[1]) == len(wave) // 320
    np.testing.assert_array_equal(out[0], speech_reference_codes["s0900"])
    # Cores of 1 s (50 frames) with 0.3 s (15 frames) of context each side, encoded whole, context dropped.
    total = len(wave) // 320
    windows = []
    for a in range(0, total, 50):
        b = min(a + 50, total)
        w0 = max(0, a - 15)
        stop = len(wave) if b == total else min(len(wave), (b + 15) * 320)
        windows.append((w0 * 320, stop, a - w0, b - w0))
    expected = np.concatenate([
        reference_codes(reference_codec, wave[s:e])[k0:k1] for s, e, k0, k1 in windows
    ])
    np.testing.assert_array_equal(out[1], expected)
    assert_diverse([out[1]])


def test_seed_chunking_reproduces_hard_splits(random_model_dirs, reference_codec, speech):
    wave = speech["s3300"]
    enc = NeucodecEncoder.from_pretrained(
        random_model_dirs.model_dir, random_model_dirs.semantic_model_dir, device=TEST_DEVICE,
        chunking="seed", seed_chunk_seconds=1.2,
    )
    out = enc.encode([wave], ids=["long"])
    (codes,) = out
    assert out.chunked_ids == ["long"] and enc.provenance["chunking"] == "seed"
    assert enc.encode([wave[:16000]], ids=["short"]).chunked_ids == []  # per call: nothing carried over
    step = 19200  # 1.2 s: each split encoded on its own, as the old fleet did with 30 s
    expected = np.concatenate([reference_codes(reference_codec, wave[s:s + step]) for s in range(0, len(wave), step)])
    assert len(codes) == len(wave) // 320
    np.testing.assert_array_equal(codes, expected)
    assert_diverse([codes])


def test_stream_is_lazy_ordered_and_equal_to_encode(random_encoder, speech):
    items = [(f"clip{i}", speech["s0900"][: 320 * (8 + 5 * i)]) for i in range(5)]
    consumed = []

    def source():
        for item in items:
            consumed.append(item[0])
            yield item

    old = random_encoder.stream_buffer_seconds
    random_encoder.stream_buffer_seconds = 0.4
    try:
        stream = random_encoder.encode_stream(source())
        first = next(stream)
        assert first[0] == "clip0"
        assert len(consumed) < len(items), "the stream read all input before yielding"
        rest = list(stream)
    finally:
        random_encoder.stream_buffer_seconds = old
    got = [first] + rest
    assert [k for k, _ in got] == [k for k, _ in items]
    assert stream.clips == len(items) and stream.chunked_ids == [] and stream.calls >= 2
    assert stream.audio_seconds == sum(len(w) for _, w in items) / 16000
    direct = random_encoder.encode([w for _, w in items])
    for (_, codes), ref in zip(got, direct):
        np.testing.assert_array_equal(codes, ref)
    assert_diverse(direct)


def test_provenance_names_model_precision_and_versions(random_encoder, random_model_dirs):
    prov = random_encoder.provenance
    assert all(isinstance(v, str) for v in prov.values())
    assert prov["model"] == str(random_model_dirs.model_dir)
    assert prov["model_revision"] == "local" and len(prov["model_sha256"]) == 64
    assert prov["semantic_layers"] == "16" and prov["precision"] == "fp32"
    assert prov["random_weights"] == "true"
    for pkg in ("neucodec", "torch", "transformers"):
        assert prov[f"{pkg}_version"] not in ("", "not installed")
    assert random_encoder.device == TEST_DEVICE
    assert prov["acoustic_activation"] == ("fused-triton" if random_encoder.fused_activation else "reference")


def test_cpu_refuses_emulated_half_precision_and_the_gpu_kernel(reference_codec):
    import torch

    from gpu_executor.encoder.engine import check_cpu_precision

    check_cpu_precision("fp32")
    for precision, probe in (("bf16", "_is_mkldnn_bf16_supported"), ("fp16", "_is_mkldnn_fp16_supported")):
        if getattr(torch.ops.mkldnn, probe)():
            check_cpu_precision(precision)  # native support: allowed
        else:
            with pytest.raises(ValueError, match=f"no native {precision} arithmetic"):
                check_cpu_precision(precision)
    needs_cuda = (r"fused_activation \(NEUCODEC_FUSED_ACTIVATION\) needs a CUDA device with Triton: "
                  "the encoder runs on cpu")
    with pytest.raises(ValueError, match=needs_cuda):
        NeucodecEncoder.from_model(reference_codec, device="cpu", fused_activation=True)
