"""The SFT settings as a Dagster resource; unset fields fall back to NEUCODEC_SFT_* environment variables."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from neucodec_assets.sft.layout import DEFAULT_PREFIX, SftLayout
from neucodec_assets.sft.packing import DEFAULT_BLOCK_SIZE
from neucodec_assets.sft.pairing import PairingConfig
from neucodec_assets.sft.split import DEFAULT_VALIDATION_FRACTION
from resources.bucket.base import ShardLayout
from resources.env_settings import env_number, env_str

DEFAULTS = PairingConfig()


def _pick(value: int | float | None, env: str, kind: type[int] | type[float], default: int | float) -> int | float:
    """The configured value, else the environment variable, else the default."""
    if value is not None:
        return value
    return env_number(env, kind, default=default)


class SftResource(dg.ConfigurableResource):
    """How SFT records are paired, tokenized, split and packed.

    Environment fallbacks: NEUCODEC_SFT_PREFIX (sft), NEUCODEC_SFT_TOKENIZER (none: no input_ids),
    NEUCODEC_SFT_TEXT_COLUMN, NEUCODEC_SFT_MIN_CPS (1.0), NEUCODEC_SFT_MAX_CPS (40.0),
    NEUCODEC_SFT_VALIDATION_FRACTION (0.01), NEUCODEC_SFT_PACK (0), NEUCODEC_SFT_BLOCK_SIZE (10240).
    """

    prefix: str | None = Field(default=None, description="bucket prefix of the SFT outputs (NEUCODEC_SFT_PREFIX)")
    tokenizer: str | None = Field(
        default=None,
        description="hub id or local folder of the tokenizer for input_ids, e.g. "
        "Scicom-intl/Multilingual-TTS-1.7B-Base; 'none' or unset: no input_ids (NEUCODEC_SFT_TOKENIZER)",
    )
    text_column: str | None = Field(default=None, description="transcript column (NEUCODEC_SFT_TEXT_COLUMN)")
    min_chars_per_second: float | None = Field(default=None, description="NEUCODEC_SFT_MIN_CPS")
    max_chars_per_second: float | None = Field(default=None, description="NEUCODEC_SFT_MAX_CPS")
    unknown_speaker: str = Field(default="unknown", description="speaker name in the training text when unknown")
    validation_fraction: float | None = Field(default=None, description="NEUCODEC_SFT_VALIDATION_FRACTION")
    split_seed: str = Field(default="", description="salt of the split hash; changing it reshuffles the split")
    pack: bool | None = Field(default=None, description="write packed blocks (needs a tokenizer) (NEUCODEC_SFT_PACK)")
    block_size: int | None = Field(default=None, description="tokens per packed block (NEUCODEC_SFT_BLOCK_SIZE)")

    def layout(self) -> SftLayout:
        return SftLayout(self.prefix or env_str("NEUCODEC_SFT_PREFIX") or DEFAULT_PREFIX)

    def tokenizer_source(self) -> str | None:
        source = self.tokenizer or env_str("NEUCODEC_SFT_TOKENIZER")
        return None if source is None or source.lower() == "none" else source

    def pairing_config(self) -> PairingConfig:
        return PairingConfig(
            text_column=self.text_column or env_str("NEUCODEC_SFT_TEXT_COLUMN"),
            shard_layout=ShardLayout.from_env().template,
            min_chars_per_second=float(
                _pick(self.min_chars_per_second, "NEUCODEC_SFT_MIN_CPS", float, DEFAULTS.min_chars_per_second)
            ),
            max_chars_per_second=float(
                _pick(self.max_chars_per_second, "NEUCODEC_SFT_MAX_CPS", float, DEFAULTS.max_chars_per_second)
            ),
        )

    def fraction(self) -> float:
        return float(
            _pick(self.validation_fraction, "NEUCODEC_SFT_VALIDATION_FRACTION", float, DEFAULT_VALIDATION_FRACTION)
        )

    def packing(self) -> bool:
        if self.pack is not None:
            return self.pack
        return (env_str("NEUCODEC_SFT_PACK") or "0").lower() in ("1", "true", "yes", "on")

    def packing_block_size(self) -> int:
        return int(_pick(self.block_size, "NEUCODEC_SFT_BLOCK_SIZE", int, DEFAULT_BLOCK_SIZE))
