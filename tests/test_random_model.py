"""The random model helper: hub layouts, marked as random, cached once, and codes that vary."""

from __future__ import annotations

import json

import numpy as np
import yaml

from gpu_executor.codec.random_model import FORMAT_VERSION, cached_random_model
from tests.fixtures.model import assert_diverse


def test_folders_have_the_hub_layouts(random_model_dirs):
    model, semantic = random_model_dirs.model_dir, random_model_dirs.semantic_model_dir
    assert (model / "pytorch_model.bin").is_file()
    meta = yaml.safe_load((model / "meta.yaml").read_text())
    assert meta["random_weights"] is True and meta["format_version"] == FORMAT_VERSION
    config = json.loads((semantic / "config.json").read_text())
    assert config["model_type"] == "wav2vec2-bert" and config["num_hidden_layers"] == 24
    assert config["position_embeddings_type"] == "relative_key"
    pre = json.loads((semantic / "preprocessor_config.json").read_text())
    assert pre["feature_extractor_type"] == "SeamlessM4TFeatureExtractor"
    assert (pre["feature_size"], pre["num_mel_bins"], pre["padding_value"], pre["stride"]) == (80, 80, 1, 2)
    assert pre["sampling_rate"] == 16000 and pre["return_attention_mask"] is True
    assert list(semantic.glob("*.safetensors"))


def test_cache_is_reused_and_complete(random_model_dirs):
    again = cached_random_model()
    assert again == random_model_dirs
    root = random_model_dirs.model_dir.parent
    assert (root / ".complete").is_file()
    # No half-written temp folder is left next to it.
    assert not [p for p in root.parent.glob(f".{root.name}.*")]


def test_codes_vary_through_the_real_loading_path(random_encoder, speech_clips):
    assert random_encoder.provenance["random_weights"] == "true"
    wave = speech_clips[2].wave
    codes = random_encoder.encode([wave])[0]
    assert len(codes) == len(wave) // 320
    assert np.count_nonzero(codes == 43690) < len(codes) / 10
    assert_diverse([codes])
