"""Loading: hub ids through a (test) Hugging Face cache offline, local folders, and refusals with clear errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from gpu_executor.encoder import ModelLoadError, NeucodecEncoder
from tests.fixtures.model import HUB_REVISION, TEST_DEVICE, assert_diverse, offline_hub


def test_hub_ids_resolve_from_the_cache_offline(hub_cache, random_encoder, speech_clips, speech_reference_codes):
    with offline_hub(hub_cache):
        enc = NeucodecEncoder.from_pretrained("neuphonic/neucodec", "facebook/w2v-bert-2.0", device="cpu")
    prov = enc.provenance
    assert prov["model"] == "neuphonic/neucodec" and prov["model_revision"] == HUB_REVISION
    assert prov["semantic_model"] == "facebook/w2v-bert-2.0" and prov["semantic_model_revision"] == HUB_REVISION
    assert prov["model_sha256"] == random_encoder.provenance["model_sha256"]
    clip = speech_clips[2]
    (a,) = enc.encode([clip.wave])
    np.testing.assert_array_equal(a, speech_reference_codes[clip.clip_id])
    assert_diverse([a])


def test_uncached_hub_id_fails_fast_offline(tmp_path):
    with offline_hub(tmp_path):
        with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
            NeucodecEncoder.from_pretrained("neuphonic/neucodec", "facebook/w2v-bert-2.0", device="cpu")


def test_not_a_folder_nor_a_hub_id(tmp_path):
    with pytest.raises(ModelLoadError, match="neither an existing local folder nor a hub id"):
        NeucodecEncoder.from_pretrained(str(tmp_path / "missing" / "model"), device="cpu")


def test_checkpoint_missing_an_encoder_weight_is_refused(random_model_dirs, tmp_path):
    state = torch.load(random_model_dirs.model_dir / "pytorch_model.bin", map_location="cpu", mmap=True,
                       weights_only=True)
    dropped = "CodecEnc.conv_blocks.2.block.1.block.1.weight_v"
    assert dropped in state
    folder = tmp_path / "neucodec"
    folder.mkdir()
    # Only encoder keys are needed to reach the check; the decoder is left out to keep the file small.
    kept = {k: v for k, v in state.items() if not k.startswith("generator.") or k.startswith("generator.quantizer")}
    kept.pop(dropped)
    torch.save(kept, folder / "pytorch_model.bin")
    shutil.copy(random_model_dirs.model_dir / "meta.yaml", folder / "meta.yaml")
    with pytest.raises(ModelLoadError, match=dropped.replace(".", r"\.")):
        NeucodecEncoder.from_pretrained(folder, random_model_dirs.semantic_model_dir, device="cpu")


def test_from_model_wraps_the_package_model(reference_codec, speech_clips, speech_reference_codes):
    enc = NeucodecEncoder.from_model(reference_codec, device=TEST_DEVICE)
    clip = speech_clips[1]
    (a,) = enc.encode([clip.wave])
    np.testing.assert_array_equal(a, speech_reference_codes[clip.clip_id])
    assert_diverse([a])
    # The package's modules are shared, not modified: weight norm is still in place.
    assert hasattr(reference_codec.CodecEnc.conv_blocks[0], "weight_g")
