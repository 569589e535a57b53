"""SFT dataset: pair neucodec tokens with transcripts, training ids, split, statistics, card, charts, packing.

`sft_assets` are the Dagster assets; they need the resources `bucket` (BucketResource) and `sft` (SftResource).
"""

from neucodec_assets.sft.assets import sft_assets, sft_dataset, sft_pairs
from neucodec_assets.sft.settings import SftResource

__all__ = ["SftResource", "sft_assets", "sft_dataset", "sft_pairs"]
