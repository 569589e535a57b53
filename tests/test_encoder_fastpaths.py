"""The GPU fast paths in their CPU forms: bucket padding for CUDA graphs, weights cast once at load, the SDPA
relative-position attention, the pre-quantization latent, and the modes a CPU must refuse."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from gpu_executor.encoder import NeucodecEncoder
from gpu_executor.encoder.graphs import (
    BucketedSemantic,
    BucketPlan,
    GraphKey,
    batch_buckets,
    frame_buckets,
)
from gpu_executor.encoder.precision import cast_matmul_weights
from gpu_executor.encoder.semantic import SemanticStack
from tests.fixtures.model import TEST_DEVICE, assert_diverse


def test_bucket_sizes_and_selection():
    frames = frame_buckets(6002)
    assert frames[0] == 64 and frames[-1] >= 6002 and len(frames) < 25
    assert all(f % 16 == 0 for f in frames) and frames == sorted(set(frames))
    # Any length pads by at most 25% (plus rounding to 16 frames) to reach its bucket.
    assert all(b <= a * 1.25 + 16 for a, b in zip(frames, frames[1:]))
    assert batch_buckets(64) == [1, 2, 4, 8, 16, 32, 64] and batch_buckets(48)[-1] == 48
    plan = BucketPlan(max_frames=6002, max_batch=64)
    assert plan.key_for(3, 100) == GraphKey(4, 112)
    assert plan.key_for(1, 64) == GraphKey(1, 64) and plan.key_for(64, 1) == GraphKey(64, 64)
    assert plan.key_for(65, 100) is None and plan.key_for(1, frames[-1] + 1) is None  # eager beyond the buckets
    with pytest.raises(ValueError):
        plan.key_for(0, 10)


def test_graph_and_stream_modes_are_refused_off_cuda(reference_codec):
    if TEST_DEVICE != "cpu":
        pytest.skip("a CPU refusal")
    with pytest.raises(ValueError, match="need a CUDA device"):
        NeucodecEncoder.from_model(reference_codec, device="cpu", graphs="cuda")
    with pytest.raises(ValueError, match="need a CUDA device"):
        NeucodecEncoder.from_model(reference_codec, device="cpu", overlap_stream=True)
    with pytest.raises(ValueError, match="CUDA tensor-core mode"):
        NeucodecEncoder.from_model(reference_codec, device="cpu", precision="tf32")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        BucketedSemantic(None, torch.device("cpu"), capture=True, max_frames=100)
    assert NeucodecEncoder.from_model(reference_codec, device="cpu").graph_stats is None


def test_bucket_padding_keeps_tokens_exact(reference_codec, speech_clips, speech_reference_codes):
    """What a CUDA graph runs: the batch padded to its (batch, frames) bucket with the padding masked."""
    enc = NeucodecEncoder.from_model(reference_codec, device=TEST_DEVICE, graphs="buckets", batch_seconds=8.0,
                                     min_batch_fill=0.0, acoustic_per_clip=False)
    clips = [c for c in speech_clips if 0.5 < len(c.wave) / 16000 < 4]
    out = enc.encode([c.wave for c in clips])
    assert out.batches == 2 and enc.provenance["semantic_graphs"] == "buckets"
    assert enc.graph_stats == {"captured": 0, "kept": 0, "eager_batches": 0}  # padded, run eagerly: no graph
    for clip, codes in zip(clips, out):
        np.testing.assert_array_equal(codes, speech_reference_codes[clip.clip_id], err_msg=clip.clip_id)
    assert_diverse(list(out))


def test_latent_is_the_quantizer_input(reference_codec, speech_clips):
    enc = NeucodecEncoder.from_model(reference_codec, device=TEST_DEVICE)
    waves = [c.wave for c in speech_clips if c.clip_id in ("s0900", "s1600")]
    latents = enc.encode_latents(waves)
    codes = enc.encode(waves)
    for wave, lat, c in zip(waves, latents, codes):
        assert lat.shape == (len(wave) // 320, 2048) and lat.dtype == np.float32
        with torch.inference_mode():
            _, idx = enc._quantizer(torch.from_numpy(lat)[None].to(enc.device))
        np.testing.assert_array_equal(idx[0, :, 0].cpu().numpy().astype(np.uint16), c)
    assert_diverse(list(codes))
    with pytest.raises(ValueError, match="whole-clip limit"):
        enc.encode_latents([np.zeros(100, np.float32)])


def _tiny_w2v_bert():
    from gpu_executor.codec.neucodec_compat import import_neucodec

    import_neucodec()  # transformers imports torchaudio: make it importable first
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

    torch.manual_seed(0)
    config = Wav2Vec2BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=3,
                                conv_depthwise_kernel_size=5, position_embeddings_type="relative_key",
                                left_max_position_embeddings=8, right_max_position_embeddings=4)
    return Wav2Vec2BertModel(config).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_weights_cast_once_give_the_autocast_numbers(dtype):
    model = _tiny_w2v_bert()
    torch.manual_seed(1)
    features = torch.randn(2, 40, 160)
    frames = [40, 27]
    per_call = SemanticStack(model, 3)
    cast = copy.deepcopy(model)
    assert cast_matmul_weights(cast, dtype) > 0
    assert cast.encoder.layers[0].ffn1.intermediate_dense.weight.dtype == dtype
    assert cast.encoder.layers[0].final_layer_norm.weight.dtype == torch.float32  # norms stay fp32
    once = SemanticStack(cast, 3)
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
        a = per_call(features, frames)
        b = once(features, frames)
    assert a.dtype == b.dtype
    assert torch.equal(a, b), f"max difference {(a.float() - b.float()).abs().max()}"
    assert model.encoder.layers[0].ffn1.intermediate_dense.weight.dtype == torch.float32  # the original is untouched


def test_sdpa_relative_attention_matches_transformers():
    """The relative_key bias gathered by distance through scaled_dot_product_attention, against transformers' own
    attention (which builds the [T, T, 64] embedding tensor): fp32, no padding."""
    model = _tiny_w2v_bert()
    torch.manual_seed(2)
    features = torch.randn(1, 50, 160)
    with torch.inference_mode():
        ours = SemanticStack(model, 2, query_block=16)(features, [50])  # several query blocks
        theirs = model(features, output_hidden_states=True).hidden_states[2]
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    assert rel < 1e-5, rel
