"""`neucodec_tokens`: one tokens file per shard partition, encoded on the `gpu` pool.

A run may hold several shards (the backfill policy groups them): the model is loaded once, the next shard is
downloaded while the current one encodes, and every shard gets its own materialization metadata and check
evaluations. A shard whose tokens file already exists (same model, precision and chunking, and valid) is reported
as existing without encoding, unless the run config says ``force: true``. A shard that cannot be read fails alone:
the others of the run are still recorded, then the run fails naming it.
"""

# No `from __future__ import annotations`: Dagster reads the config and resource types from the runtime
# annotations of the decorated function.

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
from pydantic import Field

from neucodec_assets.checks import TOKENS_CHECK_SPECS, complete_evaluation, completeness_of, tar_audio_ids, \
    valid_evaluation
from neucodec_assets.partitions import shards_partitions
from neucodec_assets.prefetch import ShardPrefetcher
from neucodec_assets.shard_encoding import ShardResult, encode_shard, existing_result, existing_tokens, \
    validate_existing
from neucodec_assets.tokens_metadata import TOKENS_ASSET_KEY, tokens_key
from resources.bucket import Bucket, BucketError
from resources.dagster_resources import BucketResource, EncoderResource
from resources.env_settings import env_number
from resources.shard_reader import SPOOL_ENV, ShardError, read_shard
from resources.tokens_file import TokensFileError, TokensFileReport

SHARDS_PER_RUN_ENV = "NEUCODEC_SHARDS_PER_RUN"
DEFAULT_SHARDS_PER_RUN = 8
DECODE_WORKERS_ENV = "NEUCODEC_DECODE_WORKERS"
GPU_POOL = "gpu"

# Errors that concern one shard only: the run goes on with its other shards.
SHARD_ERRORS = (ShardError, TokensFileError, BucketError, FileNotFoundError)


def shards_per_run() -> int:
    """How many shards a backfill puts into one run (one model load per run)."""
    return env_number(SHARDS_PER_RUN_ENV, int, default=DEFAULT_SHARDS_PER_RUN, minimum=1)


class TokensConfig(dg.Config):
    """Run config of `neucodec_tokens`."""

    force: bool = Field(
        default=False,
        description="Encode even where a valid tokens file made with the same model, precision and chunking exists.",
    )


def gpu_label() -> str:
    """The GPU the run worker was given (GPU run launcher) for the metadata."""
    from gpu_executor.gpus import current_gpu_slot

    slot = current_gpu_slot()
    return (f"slot {slot['gpu_slot']}, CUDA_VISIBLE_DEVICES={slot['cuda_visible_devices']}, "
            f"host {slot['host']}")


def _failed_shards_table(failed: list[tuple[str, str]]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"shard": key, "error": error}) for key, error in failed],
        schema=dg.TableSchema(columns=[dg.TableColumn("shard", "string"), dg.TableColumn("error", "string")]),
    )


def _check_only_evaluations(store: Bucket, key: str) -> list[dg.AssetCheckEvaluation]:
    """Re-read a shard's tokens file from the bucket and evaluate both checks (no encoding)."""
    try:
        data = store.read_bytes(tokens_key(key))
    except FileNotFoundError:
        report = TokensFileReport(problems=[f"no tokens file at {tokens_key(key)}"])
        return [valid_evaluation(key, report)]
    _, report = validate_existing(store, key, data)
    evaluations = [valid_evaluation(key, report)]
    try:
        evaluations.append(complete_evaluation(key, completeness_of(tar_audio_ids(store, key), report)))
    except (OSError, BucketError, ShardError) as exc:
        evaluations.append(dg.AssetCheckEvaluation(
            asset_key=TOKENS_ASSET_KEY, check_name="tokens_file_complete", passed=False, partition=key,
            description=f"cannot read the shard's audio.tar: {exc}", severity=dg.AssetCheckSeverity.ERROR,
        ))
    return evaluations


@dg.multi_asset(
    name="neucodec_tokens",
    specs=[
        dg.AssetSpec(
            TOKENS_ASSET_KEY,
            partitions_def=shards_partitions,
            skippable=True,
            group_name="neucodec",
            kinds={"parquet", "pytorch"},
            description="neucodec tokens of one shard: `<shard>/neucodec_tokens.parquet` in the bucket "
            "(segment_id, neucodec_tokens = little-endian uint16 bytes, token_count).",
        )
    ],
    check_specs=TOKENS_CHECK_SPECS,
    backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=shards_per_run()),
    pool=GPU_POOL,
    can_subset=True,
)
def neucodec_tokens(
    context: dg.AssetExecutionContext, config: TokensConfig, bucket: BucketResource, encoder: EncoderResource,
) -> Iterator:
    keys = list(context.partition_keys)
    store = bucket.open()
    selected_checks = set(context.selected_asset_check_keys)

    def selected(evaluations: list[dg.AssetCheckEvaluation]) -> list[dg.AssetCheckEvaluation]:
        return [e for e in evaluations if dg.AssetCheckKey(e.asset_key, e.check_name) in selected_checks]

    if TOKENS_ASSET_KEY not in context.selected_asset_keys:
        context.log.info(f"checking the tokens files of {len(keys)} shards (no encoding)")
        for key in keys:
            yield from selected(_check_only_evaluations(store, key))
        return

    loaded = encoder.load()
    context.log.info(
        f"{len(keys)} shards in this run; model {loaded.model_label} on {loaded.device} "
        f"(loaded in {loaded.load_seconds:.1f} s); bucket {store.url}"
    )
    gpu = gpu_label()
    results: list[ShardResult] = []
    failed: list[tuple[str, str]] = []
    to_encode: list[str] = []
    crash: Exception | None = None
    try:
        for key in keys:
            if config.force:
                to_encode.append(key)
                continue
            try:
                report = existing_tokens(store, key, loaded.provenance, context.log.info)
                if report is None:
                    to_encode.append(key)
                    continue
                results.append(existing_result(store, key, report))
            except SHARD_ERRORS as exc:
                failed.append((key, f"{type(exc).__name__}: {exc}"))
                context.log.error(f"shard {key} failed: {exc}")
                continue
            context.log.info(f"{key}: a valid tokens file made the same way exists; not encoded again")

        spool = os.environ.get(SPOOL_ENV) or None
        with tempfile.TemporaryDirectory(prefix="neucodec-tokens-", dir=spool) as work, \
                ShardPrefetcher(store, to_encode, Path(work) / "prefetch") as prefetcher:
            for fetched in prefetcher:
                if fetched.error is not None:
                    failed.append((fetched.prefix, str(fetched.error)))
                    context.log.error(f"shard {fetched.prefix} failed: {fetched.error}")
                    continue
                try:
                    with read_shard(fetched.source, fetched.prefix,
                                    workers=env_number(DECODE_WORKERS_ENV, int, default=2, minimum=1)) as reader:
                        result = encode_shard(
                            reader, store, loaded, Path(work), context.log.info, gpu=gpu,
                            extra_provenance={"dagster_run_id": context.run_id},
                        )
                except SHARD_ERRORS as exc:
                    failed.append((fetched.prefix, f"{type(exc).__name__}: {exc}"))
                    context.log.error(f"shard {fetched.prefix} failed: {exc}")
                    continue
                if fetched.fetch_seconds:
                    result.figures.extra = {**result.figures.extra,
                                            "download_seconds": round(fetched.fetch_seconds, 3)}
                results.append(result)
                f = result.figures
                context.log.info(
                    f"{f.prefix}: {f.segment_count} segments, {len(f.failed or [])} failed, "
                    f"{f.total_audio_seconds / 3600:.4f} h, {f.total_tokens} tokens, "
                    f"{f.real_time_factor or 0:.2f}x real time -> {f.output_key}"
                )
    except Exception as exc:  # noqa: BLE001 - record the shards already done, then fail the run with it
        crash = exc

    if not failed and crash is None:
        for result in results:
            context.add_asset_metadata(result.figures.to_metadata(), partition_key=result.figures.prefix)
        yield dg.MaterializeResult(asset_key=TOKENS_ASSET_KEY)
    else:
        for result in results:
            yield dg.AssetMaterialization(
                asset_key=TOKENS_ASSET_KEY, partition=result.figures.prefix, metadata=result.figures.to_metadata(),
            )
    for result in results:
        yield from selected(result.checks)
    if crash is not None:
        raise crash
    if failed:
        raise dg.Failure(
            description=f"{len(failed)} of {len(keys)} shards failed: "
            + "; ".join(f"{k}: {e}" for k, e in failed[:5]),
            metadata={"failed_shards": _failed_shards_table(failed),
                      "recorded_shards": dg.MetadataValue.int(len(results))},
        )
