"""Dagster assets of the SFT dataset: `sft_pairs` (one partition per shard, many shards per run) and
`sft_dataset` (all shards).

Both write their files themselves through the bucket resource (partition keys contain '/', which path-based
IO managers would turn into folders) and record the numbers a training team needs: one materialization per shard
for the pairs, a MaterializeResult for the dataset. neucodec_assets/automation.py says when they run by themselves.
"""

import functools
from collections.abc import Callable, Iterator

import dagster as dg
import polars as pl

from neucodec_assets.automation import dataset_condition, pairs_condition
from neucodec_assets.progress import PROGRESS_ASSET_KEY
from neucodec_assets.progress.summary import UnsupportedSummary, read_progress_summary
from neucodec_assets.sft.dataset_build import (
    DURATION_CHART,
    HOURS_CHART,
    DatasetSettings,
    build_dataset,
)
from neucodec_assets.sft.pairing import DROP_REASONS
from neucodec_assets.sft.settings import SftResource
from neucodec_assets.sft.shard_records import write_shard_records
from neucodec_assets.sft.training_ids import TrainingIdsBuilder, load_tokenizer
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from neucodec_assets.tokens.partitions import shards_partitions
from resources.bucket import Bucket
from resources.dagster_resources import BucketResource

GROUP = "sft"
PAIRS_PER_RUN = 64
PREVIEW_ROWS = 5


@functools.lru_cache(maxsize=2)
def training_ids_builder(source: str, unknown_speaker: str) -> TrainingIdsBuilder:
    """One tokenizer per process and source: loading it and adding the speech tokens is too slow to repeat per shard."""
    return TrainingIdsBuilder(load_tokenizer(source), unknown_speaker=unknown_speaker)


def _md_table(frame: pl.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |\n|" + "|".join("---" for _ in frame.columns) + "|\n"
    lines = []
    for row in frame.iter_rows():
        cells = [f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v) for v in row]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return header + "\n".join(lines)


def _pair_shard(store, shard: str, sft: SftResource, log) -> dict[str, object]:
    """Write one shard's SFT records; the materialization metadata of its partition."""
    source = sft.tokenizer_source()
    builder = training_ids_builder(source, sft.unknown_speaker) if source else None
    outcome = write_shard_records(store, shard, sft.layout(), sft.pairing_config(), builder, source,
                                  validation_fraction=sft.fraction(), split_seed=sft.split_seed)
    result = outcome.pairing
    where = (f"-> {', '.join(f'{store.url}/{key}' for key in outcome.records_keys.values())}"
             if outcome.records_keys else "(no records file: all dropped)")
    log(f"{shard}: {result.kept} records of {result.token_rows} token rows and {result.metadata_rows} metadata rows "
        + where)
    drops = pl.DataFrame(
        {
            "reason": list(DROP_REASONS),
            "segments": [result.dropped.get(r, 0) for r in DROP_REASONS],
            "examples": [", ".join(result.dropped_examples.get(r, [])) for r in DROP_REASONS],
        }
    )
    preview = result.records.head(PREVIEW_ROWS).select(
        "segment_id", "speaker", pl.col("text").str.slice(0, 80), "audio_seconds", "token_count"
    )
    metadata: dict[str, dg.RawMetadataValue] = {
        "dagster/row_count": result.kept,
        "shard": shard,
        "records": result.kept,
        "token_rows": result.token_rows,
        "metadata_rows": result.metadata_rows,
        "had_metadata": outcome.had_metadata,
        "dropped_total": sum(result.dropped.values()),
        **{f"dropped/{reason}": result.dropped.get(reason, 0) for reason in DROP_REASONS},
        "dropped": dg.MetadataValue.md(_md_table(drops)),
        "hours": round(outcome.hours, 4),
        "speech_tokens": outcome.speech_tokens,
        "languages": dg.MetadataValue.json(outcome.by_language),
        "datasets": dg.MetadataValue.json(outcome.by_dataset),
        "tokenizer": source or "none (no input_ids)",
        "records_keys": dg.MetadataValue.json(outcome.records_keys),
        "records_bytes": outcome.records_bytes,
        "preview": dg.MetadataValue.md(_md_table(preview)),
        "seconds": round(outcome.seconds, 3),
    }
    for split, key in outcome.records_keys.items():
        metadata[f"{split}_records_url"] = dg.MetadataValue.url(f"{store.url}/{key}")
    if outcome.training_tokens is not None:
        metadata["training_tokens"] = outcome.training_tokens
    return metadata


@dg.asset(
    partitions_def=shards_partitions,
    deps=[TOKENS_ASSET_KEY],
    group_name=GROUP,
    kinds={"parquet", "polars"},
    description="Tokens paired with transcripts for one shard, filed by split: `{prefix}/{split}/{shard}.parquet` "
    "(DESIGN.md, SFT records), with input_ids for the target model when a tokenizer is configured. Dropped "
    "segments are counted by reason.",
    # Many shards per run (one process and one tokenizer load for all of them), as for the tokens.
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=PAIRS_PER_RUN),
    automation_condition=pairs_condition(),
    output_required=False,
)
def sft_pairs(context: dg.AssetExecutionContext, bucket: BucketResource, sft: SftResource) -> Iterator:
    store = bucket.open()
    failed: list[str] = []
    for shard in context.partition_keys:
        try:
            metadata = _pair_shard(store, shard, sft, context.log.info)
        except (FileNotFoundError, ValueError) as exc:
            failed.append(f"{shard}: {exc}")
            context.log.error(f"sft_pairs for shard {shard!r} failed: {exc}")
            continue
        yield dg.AssetMaterialization(asset_key=context.asset_key, partition=shard, metadata=metadata)
    if failed:
        raise dg.Failure(description=f"sft_pairs failed for {len(failed)} shards: " + "; ".join(failed[:5]))


def roundtrip_quality(instance: dg.DagsterInstance, store: Bucket,
                      warn: Callable[[str], None]) -> pl.DataFrame | None:
    """Decode round-trip means per language as `encoding_progress` last summarized them (None before its first run):
    the dataset card reports token quality without reading every shard's materialization again."""
    try:
        summary = read_progress_summary(instance, store)
    except UnsupportedSummary as exc:
        warn(f"the dataset card has no token quality table: {exc}")
        return None
    if summary is None:
        return None
    rows = [{"language": language, **group.roundtrip_means, "random_weights": group.roundtrip_random,
             "segments": group.roundtrip_sampled}
            for language, group in summary.by_language.items() if group.roundtrip_means]
    return pl.DataFrame(rows) if rows else None


@dg.asset(
    deps=[sft_pairs, PROGRESS_ASSET_KEY],  # the card reports the round-trip quality encoding_progress summarizes
    group_name=GROUP,
    automation_condition=dataset_condition(),
    kinds={"parquet", "huggingface"},
    description="The SFT dataset over every paired shard: split file, manifest, totals per language and dataset, "
    "charts, a dataset card (README.md) whose configs load train and validation, and optional packed blocks. "
    "Each build is a new version, published by replacing the card; it waits for sft_pairs runs in flight.",
)
def sft_dataset(context: dg.AssetExecutionContext, bucket: BucketResource, sft: SftResource) -> dg.MaterializeResult:
    store = bucket.open()
    layout = sft.layout()
    settings = DatasetSettings(
        validation_fraction=sft.fraction(),
        split_seed=sft.split_seed,
        pack=sft.packing(),
        block_size=sft.packing_block_size(),
    )
    try:
        outcome = build_dataset(store, layout, settings, log=context.log.info,
                                quality=roundtrip_quality(context.instance, store, context.log.warning))
    except (FileNotFoundError, ValueError) as exc:
        raise dg.Failure(description=f"sft_dataset: {exc}") from exc
    totals = outcome.totals
    by_split = {row["split"]: row for row in outcome.by_split.iter_rows(named=True)}
    metadata: dict[str, dg.RawMetadataValue] = {
        "dagster/row_count": int(totals["segments"]),
        "shards": outcome.shards,
        "segments": int(totals["segments"]),
        "hours": round(float(totals["hours"]), 4),
        "speech_tokens": int(totals["speech_tokens"]),
        "train_segments": int(by_split.get("train", {}).get("segments", 0)),
        "validation_segments": int(by_split.get("validation", {}).get("segments", 0)),
        "validation_hours": round(float(by_split.get("validation", {}).get("hours", 0.0)), 4),
        "validation_fraction": settings.validation_fraction,
        "by_language": dg.MetadataValue.md(_md_table(outcome.by_language)),
        "by_dataset": dg.MetadataValue.md(_md_table(outcome.by_dataset)),
        "by_split": dg.MetadataValue.md(_md_table(outcome.by_split)),
        "dropped": dg.MetadataValue.json(outcome.dropped),
        "tokenizers": dg.MetadataValue.json([t or "none" for t in outcome.tokenizers]),
        # The charts are bucket objects beside the card: the event log links them, it does not hold them.
        "hours_per_language_chart": dg.MetadataValue.url(store.url_of(outcome.keys[HOURS_CHART])),
        "clip_duration_chart": dg.MetadataValue.url(store.url_of(outcome.keys[DURATION_CHART])),
        "card": dg.MetadataValue.md(outcome.card),
        "card_url": dg.MetadataValue.url(store.url_of(outcome.keys["card"])),
        "version": outcome.publication.version,
        "replaced_version": outcome.publication.replaced or "none",
        "deleted_versions": dg.MetadataValue.json(outcome.publication.deleted_versions),
        "manifest_key": outcome.keys["manifest"],
        "split_key": outcome.keys["split"],
        "seconds": round(outcome.seconds, 3),
    }
    if "training_tokens" in totals:
        metadata["training_tokens"] = int(totals["training_tokens"])
    if outcome.packed is not None:
        metadata["packed"] = dg.MetadataValue.json(outcome.packed)
        metadata["packed_parts"] = dg.MetadataValue.json(outcome.packed_parts)
    return dg.MaterializeResult(metadata=metadata)


sft_assets = [sft_pairs, sft_dataset]
