"""Write a randomly initialized, full-size neucodec model in the Hugging Face folder layouts.

The hub cannot be reached from test and CI machines, yet the real loading code (hub layout folders, checkpoint
key names, transformers configs) must be exercised. This module writes:

- ``model_dir``: the ``neuphonic/neucodec`` layout (``pytorch_model.bin``, ``meta.yaml``, ``config.json``),
  holding the encoder and decoder weights the package's checkpoint holds, randomly initialized;
- ``semantic_model_dir``: a transformers folder for ``facebook/w2v-bert-2.0`` (config, safetensors weights,
  ``preprocessor_config.json`` for ``SeamlessM4TFeatureExtractor``).

A random model quantizes every frame to code 43690 (its FSQ input is near zero), which would make any token
comparison meaningless; the FSQ input projection is therefore rescaled on a calibration signal so that codes vary.
``meta.yaml`` marks the weights as random so that provenance can say so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from gpu_executor.codec import SAMPLE_RATE, SAMPLES_PER_TOKEN
from gpu_executor.settings import load_settings

__all__ = [
    "RandomModelDirs",
    "write_random_model",
    "cached_random_model",
    "default_cache_root",
    "FORMAT_VERSION",
    "W2V_BERT_CONFIG",
    "W2V_BERT_PREPROCESSOR_CONFIG",
]

# Bump when the folders' content changes: cached folders are keyed by it.
FORMAT_VERSION = 1

# facebook/w2v-bert-2.0 config.json (the values that shape the network).
W2V_BERT_CONFIG: dict = {
    "architectures": ["Wav2Vec2BertModel"],
    "model_type": "wav2vec2-bert",
    "activation_dropout": 0.0,
    "adapter_act": "relu",
    "adapter_kernel_size": 3,
    "adapter_stride": 2,
    "add_adapter": False,
    "apply_spec_augment": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "conformer_conv_dropout": 0.1,
    "conv_depthwise_kernel_size": 31,
    "eos_token_id": 2,
    "feat_proj_dropout": 0.0,
    "feature_projection_input_dim": 160,
    "final_dropout": 0.1,
    "hidden_act": "swish",
    "hidden_dropout": 0.0,
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "layer_norm_eps": 1e-05,
    "layerdrop": 0.1,
    "left_max_position_embeddings": 64,
    "mask_time_prob": 0.05,
    "max_source_positions": 5000,
    "num_adapter_layers": 1,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "output_hidden_size": 1024,
    "pad_token_id": 0,
    "position_embeddings_type": "relative_key",
    "right_max_position_embeddings": 8,
    "rotary_embedding_base": 10000,
    "use_intermediate_ffn_before_adapter": False,
    "use_weighted_layer_sum": False,
    "vocab_size": None,
}

# facebook/w2v-bert-2.0 preprocessor_config.json.
W2V_BERT_PREPROCESSOR_CONFIG: dict = {
    "feature_extractor_type": "SeamlessM4TFeatureExtractor",
    "feature_size": 80,
    "num_mel_bins": 80,
    "padding_side": "right",
    "padding_value": 1,
    "processor_class": "Wav2Vec2BertProcessor",
    "return_attention_mask": True,
    "sampling_rate": SAMPLE_RATE,
    "stride": 2,
}

# Target standard deviation of the FSQ input (before its tanh bound): spreads frames over all 4 levels per dim.
_FSQ_INPUT_STD = 1.5


@dataclass(frozen=True)
class RandomModelDirs:
    """The two folders of a written random model."""

    model_dir: Path
    semantic_model_dir: Path


def default_cache_root() -> Path:
    """``$NEUCODEC_CACHE_DIR`` or ``~/.cache/neucodec-platform``."""
    configured = load_settings().cache_dir
    return Path(configured) if configured else Path.home() / ".cache" / "neucodec-platform"


def _calibration_wave(seconds: float = 2.0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A deterministic vowel-like signal (harmonics with a moving pitch plus a little noise)."""
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    wave = sum(np.sin(k * phase) / k for k in range(1, 12))
    wave = wave * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2)
    wave = wave + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def _build_semantic_model(seed: int):
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

    torch.manual_seed(seed + 1)
    config = Wav2Vec2BertConfig(**{k: v for k, v in W2V_BERT_CONFIG.items() if k != "architectures"})
    config.architectures = W2V_BERT_CONFIG["architectures"]
    return Wav2Vec2BertModel(config).eval()


def _build_codec_parts(seed: int) -> dict[str, torch.nn.Module]:
    from gpu_executor.codec.neucodec_compat import import_neucodec

    import_neucodec()
    from neucodec.codec_decoder_vocos import CodecDecoderVocos
    from neucodec.codec_encoder import CodecEncoder
    from neucodec.module import SemanticEncoder

    torch.manual_seed(seed)
    return {
        "SemanticEncoder_module": SemanticEncoder(1024, 1024, 1024),
        "CodecEnc": CodecEncoder(),
        "generator": CodecDecoderVocos(hop_length=480),
        "fc_prior": torch.nn.Linear(2048, 2048),
        "fc_post_a": torch.nn.Linear(2048, 1024),
    }


@torch.inference_mode()
def _rescale_fsq_input(parts: dict[str, torch.nn.Module], semantic_model, folder: Path) -> float:
    """Rescale the FSQ input projection so that a calibration signal's FSQ inputs have std ``_FSQ_INPUT_STD``."""
    from transformers import SeamlessM4TFeatureExtractor

    wave = torch.from_numpy(_calibration_wave())[None, None, :]
    wave = torch.nn.functional.pad(wave, (0, SAMPLES_PER_TOKEN - wave.shape[-1] % SAMPLES_PER_TOKEN))
    fe = SeamlessM4TFeatureExtractor.from_pretrained(folder)
    feats = fe(wave[0], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    hidden = semantic_model(feats, output_hidden_states=True).hidden_states[16].transpose(1, 2)
    semantic = parts["SemanticEncoder_module"](hidden)
    acoustic = parts["CodecEnc"](wave).transpose(1, 2)
    n = min(semantic.shape[-1], acoustic.shape[-1])
    concat = torch.cat([semantic[..., :n], acoustic[..., :n]], dim=1)
    concat = parts["fc_prior"](concat.transpose(1, 2))  # [1, F, 2048]
    proj = parts["generator"].quantizer.project_in
    gen = torch.Generator().manual_seed(7)
    centered = concat[0] - concat[0].mean(0, keepdim=True)
    weight = torch.randn(proj.weight.shape, generator=gen)
    z = centered @ weight.T
    scale = _FSQ_INPUT_STD / float(z.std(0).mean())
    proj.weight.copy_(weight * scale)
    # Center each FSQ dim on the calibration signal so that all levels are used.
    proj.bias.copy_(-(concat[0].mean(0) @ proj.weight.T))
    return scale


def write_random_model(dest: Path, seed: int = 0) -> RandomModelDirs:
    """Write a random full-size neucodec model into ``dest/neucodec`` and ``dest/w2v-bert-2.0``."""
    from gpu_executor.codec.neucodec_compat import import_neucodec

    import_neucodec()  # before transformers: it makes torchaudio importable where the wheel cannot load
    dest = Path(dest)
    model_dir = dest / "neucodec"
    semantic_dir = dest / "w2v-bert-2.0"
    model_dir.mkdir(parents=True, exist_ok=True)
    semantic_dir.mkdir(parents=True, exist_ok=True)

    semantic_model = _build_semantic_model(seed)
    semantic_model.save_pretrained(semantic_dir, safe_serialization=True)
    config = json.loads((semantic_dir / "config.json").read_text())
    config.update({k: v for k, v in W2V_BERT_CONFIG.items() if k not in config})
    (semantic_dir / "config.json").write_text(json.dumps(config, indent=2))
    (semantic_dir / "preprocessor_config.json").write_text(json.dumps(W2V_BERT_PREPROCESSOR_CONFIG, indent=2))

    parts = _build_codec_parts(seed)
    for module in parts.values():
        module.eval()
    scale = _rescale_fsq_input(parts, semantic_model, semantic_dir)
    del semantic_model

    state = {}
    for prefix, module in parts.items():
        for key, value in module.state_dict().items():
            state[f"{prefix}.{key}"] = value.detach().clone().contiguous()
    torch.save(state, model_dir / "pytorch_model.bin")
    meta = {
        "random_weights": True,
        "seed": seed,
        "format_version": FORMAT_VERSION,
        "fsq_project_in_scale": round(float(scale), 6),
        "written_by": "gpu_executor.codec.random_model",
        "note": "random initialization of the neucodec 0.0.6 architecture, for tests; never for real encoding",
    }
    (model_dir / "meta.yaml").write_text(yaml.safe_dump(meta, sort_keys=True))
    # The hub mixin reads config.json first (NeuCodec's init arguments, as PyTorchModelHubMixin writes them).
    (model_dir / "config.json").write_text(json.dumps({"sample_rate": 24000, "hop_length": 480}, indent=2))
    return RandomModelDirs(model_dir=model_dir, semantic_model_dir=semantic_dir)


def cached_random_model(cache_root: Path | None = None, seed: int = 0) -> RandomModelDirs:
    """Return a random model written once under the cache (atomically: temp dir + rename)."""
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    final = root / f"random-model-v{FORMAT_VERSION}-seed{seed}"
    dirs = RandomModelDirs(final / "neucodec", final / "w2v-bert-2.0")
    if (final / ".complete").exists():
        return dirs
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        write_random_model(tmp, seed=seed)
        (tmp / ".complete").write_text("ok\n")
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first (final exists and is not empty): keep its folder.
            if not (final / ".complete").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dirs

