"""The SFT settings as a Dagster resource; an unset field takes its NEUCODEC_SFT_* setting when the run starts."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from gpu_executor.settings import Settings, load_settings
from neucodec_assets.sft.layout import SftLayout
from neucodec_assets.sft.pairing import PairingConfig


class SftResource(dg.ConfigurableResource):
    """How SFT records are paired, tokenized, split and packed; fields left unset take the NEUCODEC_SFT_*
    settings (README, Configuration)."""

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

    def _env(self) -> Settings:
        return load_settings()

    def layout(self) -> SftLayout:
        return SftLayout(self.prefix or self._env().sft_prefix)

    def tokenizer_source(self) -> str | None:
        source = self.tokenizer or self._env().sft_tokenizer
        return None if source is None or source.lower() == "none" else source

    def pairing_config(self) -> PairingConfig:
        env = self._env()
        return PairingConfig(
            text_column=self.text_column or env.sft_text_column,
            shard_layout=env.shard_layout,
            min_chars_per_second=env.sft_min_cps if self.min_chars_per_second is None else self.min_chars_per_second,
            max_chars_per_second=env.sft_max_cps if self.max_chars_per_second is None else self.max_chars_per_second,
        )

    def fraction(self) -> float:
        return self._env().sft_validation_fraction if self.validation_fraction is None else self.validation_fraction

    def packing(self) -> bool:
        return self._env().sft_pack if self.pack is None else self.pack

    def packing_block_size(self) -> int:
        return self._env().sft_block_size if self.block_size is None else self.block_size
