"""Build the encode-only parts of neucodec from hub ids or local folders, verifying every weight.

``NeuCodec.__init__`` downloads ``facebook/w2v-bert-2.0`` and ``NeuCodec.from_pretrained`` accepts hub ids only and
loads with ``strict=False`` (a renamed or missing key silently leaves a random weight). Here the real classes are
built from the folders and every weight the encoder uses must be present in the checkpoint.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from gpu_executor.codec.neucodec_compat import import_neucodec
from gpu_executor.settings import load_settings

__all__ = [
    "EncoderParts",
    "ModelLoadError",
    "ResolvedFolder",
    "SEMANTIC_LAYERS",
    "resolve_folder",
    "load_parts",
    "parts_from_neucodec",
    "file_sha256",
]

# hidden_states[16] of wav2vec2-bert is the output of its 16th layer: the layers after it never matter.
SEMANTIC_LAYERS = 16

_MODEL_FILES = ["pytorch_model.bin", "meta.yaml", "config.json"]
_SEMANTIC_FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json"]


class ModelLoadError(RuntimeError):
    """The model could not be found, fetched or fully loaded."""


@dataclass(frozen=True)
class ResolvedFolder:
    """A model folder on disk and where it came from."""

    path: Path
    source: str  # the hub id or the local folder as given
    revision: str  # hub commit hash, or "local"


@dataclass
class EncoderParts:
    """The modules ``encode_code`` uses, nothing else (no decoder, 16 semantic layers)."""

    codec_enc: nn.Module
    semantic_model: nn.Module  # transformers Wav2Vec2BertModel with SEMANTIC_LAYERS layers
    semantic_encoder: nn.Module
    fc_prior: nn.Linear
    quantizer: nn.Module  # vector_quantize_pytorch ResidualFSQ, always run in fp32
    feature_extractor: object  # transformers SeamlessM4TFeatureExtractor (its mel filters and window)
    info: dict[str, str] = field(default_factory=dict)
    shared: bool = False  # modules belong to a live NeuCodec (from_model): never cast or modify them in place


def _is_local(name: str | os.PathLike) -> bool:
    return Path(name).expanduser().is_dir()


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or load_settings().hf_hub_offline


def resolve_folder(name: str | os.PathLike, patterns: list[str], what: str) -> ResolvedFolder:
    """A local folder as is; a hub id through the local cache first, then (unless offline) the hub."""
    if _is_local(name):
        return ResolvedFolder(Path(name).expanduser().resolve(), str(name), "local")
    name = str(name)
    if name.count("/") != 1 or name.startswith(("/", ".", "~")):
        raise ModelLoadError(
            f"{what} {name!r} is neither an existing local folder nor a hub id of the form 'owner/name'"
        )
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(name, allow_patterns=patterns, local_files_only=True)
    except Exception as cached_error:  # noqa: BLE001 - any miss in the cache: try the hub below
        if _hub_offline():
            raise ModelLoadError(
                f"{what} {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set: download it "
                f"once with network access (huggingface-cli download {name}) or pass a local folder "
                f"({type(cached_error).__name__})"
            ) from cached_error
        try:
            path = snapshot_download(name, allow_patterns=patterns, etag_timeout=10)
        except Exception as error:  # noqa: BLE001 - report any hub failure with the way out
            raise ModelLoadError(
                f"could not fetch {what} {name!r} from the Hugging Face hub ({type(error).__name__}: {error}); "
                "without network access set HF_HUB_OFFLINE=1 with a filled cache, or pass a local folder"
            ) from error
    path = Path(path)
    return ResolvedFolder(path, name, path.name)


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, cached per process by (path, size, mtime)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
    return _SHA_CACHE[key]


def _new_codec_modules() -> dict[str, nn.Module]:
    """The package's own encoder classes, configured as NeuCodec(24000, 480) configures them."""
    import_neucodec()
    from neucodec.codec_encoder import CodecEncoder
    from neucodec.module import SemanticEncoder
    from vector_quantize_pytorch import ResidualFSQ

    return {
        "CodecEnc": CodecEncoder(),
        "SemanticEncoder_module": SemanticEncoder(1024, 1024, 1024),
        "fc_prior": nn.Linear(2048, 2048),
        # CodecDecoderVocos(hop_length=480).quantizer, without the decoder around it.
        "generator.quantizer": ResidualFSQ(dim=2048, levels=[4, 4, 4, 4, 4, 4, 4, 4], num_quantizers=1),
    }


def _load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(f"cannot read the neucodec checkpoint {path}: {type(error).__name__}: {error}") from error


def load_strict(module: nn.Module, prefix: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``prefix.*`` weights into ``module``; every module weight must be present with its shape."""
    expected = module.state_dict()
    missing = [k for k in expected if f"{prefix}.{k}" not in state]
    wrong = [
        f"{prefix}.{k} {tuple(state[f'{prefix}.{k}'].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if f"{prefix}.{k}" in state and state[f"{prefix}.{k}"].shape != v.shape
    ]
    if missing or wrong:
        lines = [f"  missing: {prefix}.{k}" for k in missing[:20]] + [f"  wrong shape: {w}" for w in wrong[:20]]
        more = len(missing) + len(wrong) - len(lines)
        raise ModelLoadError(
            f"the neucodec checkpoint of {source} lacks {len(missing)} and mismatches {len(wrong)} encoder weights "
            f"of {prefix} (the package would silently leave them random):\n" + "\n".join(lines)
            + (f"\n  ... and {more} more" if more > 0 else "")
        )
    module.load_state_dict({k: state[f"{prefix}.{k}"] for k in expected}, strict=True)


def _load_semantic(folder: ResolvedFolder, overrides: dict[str, torch.Tensor]):
    import_neucodec()  # transformers imports torchaudio: make it importable first
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertModel
    from transformers.utils import logging as hf_logging

    # Layers 17-24 of the checkpoint are left out on purpose: keep transformers' report of them quiet.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = Wav2Vec2BertModel.from_pretrained(
            folder.path, num_hidden_layers=SEMANTIC_LAYERS, output_loading_info=True, dtype=torch.float32
        )
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(
            f"cannot load wav2vec2-bert from {folder.source} ({folder.path}): {type(error).__name__}: {error}"
        ) from error
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", []) if k not in overrides and k != "masked_spec_embed"]
    if missing or info.get("mismatched_keys"):
        raise ModelLoadError(
            f"the wav2vec2-bert weights of {folder.source} lack {len(missing)} weights the encoder uses "
            f"(first: {missing[:5]}) or mismatch {list(info.get('mismatched_keys', []))[:5]}"
        )
    if overrides:
        # NeuCodec.from_pretrained loads semantic_model.* keys of its checkpoint over the w2v-bert weights.
        own = model.state_dict()
        used = {k: v for k, v in overrides.items() if k in own}
        model.load_state_dict(used, strict=False)
    try:
        fe = SeamlessM4TFeatureExtractor.from_pretrained(folder.path)
    except Exception as error:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the feature extractor config of {folder.source}: {error}") from error
    return model.eval(), fe


def load_codec_checkpoint(model: str | os.PathLike):
    """The neucodec folder (hub id through the local cache first, or a local folder) and its checkpoint's state."""
    folder = resolve_folder(model, _MODEL_FILES, "neucodec model")
    ckpt_path = folder.path / "pytorch_model.bin"
    if not ckpt_path.is_file():
        raise ModelLoadError(f"{folder.source}: no pytorch_model.bin in {folder.path}")
    return folder, _load_checkpoint(ckpt_path)


def load_parts(model: str | os.PathLike, semantic_model: str | os.PathLike) -> EncoderParts:
    """Resolve both models (hub ids or local folders) and build the verified encoder parts on CPU in fp32."""
    model_folder, state = load_codec_checkpoint(model)
    semantic_folder = resolve_folder(semantic_model, _SEMANTIC_FILES, "semantic model")
    modules = _new_codec_modules()
    for prefix, module in modules.items():
        load_strict(module, prefix, state, model_folder.source)
    sem_overrides = {
        k[len("semantic_model."):]: v for k, v in state.items() if k.startswith("semantic_model.")
    }
    semantic, fe = _load_semantic(semantic_folder, sem_overrides)
    meta_path = model_folder.path / "meta.yaml"
    random_weights = False
    if meta_path.is_file():
        import yaml

        meta = yaml.safe_load(meta_path.read_text()) or {}
        random_weights = bool(isinstance(meta, dict) and meta.get("random_weights"))
    info = {
        "model": model_folder.source,
        "model_revision": model_folder.revision,
        "model_sha256": file_sha256(model_folder.path / "pytorch_model.bin"),
        "semantic_model": semantic_folder.source,
        "semantic_model_revision": semantic_folder.revision,
        "random_weights": "true" if random_weights else "false",
    }
    del state
    return EncoderParts(
        codec_enc=modules["CodecEnc"].eval(),
        semantic_model=semantic,
        semantic_encoder=modules["SemanticEncoder_module"].eval(),
        fc_prior=modules["fc_prior"].eval(),
        quantizer=modules["generator.quantizer"].eval(),
        feature_extractor=fe,
        info=info,
    )


def parts_from_neucodec(codec: nn.Module) -> EncoderParts:
    """Take the encoder parts of an already built ``neucodec.NeuCodec`` (shared, not copied)."""
    semantic = codec.semantic_model
    return EncoderParts(
        codec_enc=codec.CodecEnc,
        semantic_model=semantic,
        semantic_encoder=codec.SemanticEncoder_module,
        fc_prior=codec.fc_prior,
        quantizer=codec.generator.quantizer,
        feature_extractor=codec.feature_extractor,
        info={
            "model": "in-memory NeuCodec",
            "model_revision": "unknown",
            "semantic_model": str(getattr(semantic.config, "_name_or_path", "") or "unknown"),
            "semantic_model_revision": "unknown",
            "random_weights": "unknown",
        },
        shared=True,
    )
