"""`neucodec_tokens`: one tokens file per shard partition, encoded on the `gpu` pool; and its checks, outside it.

A run may hold several shards (the backfill policy groups them); the shard loop is `TokensRun`, and this asset only
turns its outcomes into Dagster events, each as soon as its shard is done: one materialization per shard (encoded,
or existing: a valid file made the same way, unless the run config says ``force: true``) with its check
evaluations, then a failure naming the shards that failed. Around the loop: a hang watchdog, `dagster/max_runtime`
from the run's shards, the shard in flight recorded for crash isolation (tokens.crashes), and, for runs executing
in the caller's process, a GPU that no launched run holds.

The checks are their own op (`neucodec_tokens_checks`, in no pool): a run that only checks files (the UI's "Execute
checks") holds no GPU slot. In an encoding run that op does not execute (the asset yields no output for it to wait
for): the asset evaluates the checks itself, from the file it just wrote.
"""

# No `from __future__ import annotations`: Dagster reads the config and resource types from the runtime
# annotations of the decorated function.

import logging
import os
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from gpu_executor.launch.names import GPU_POOL
from gpu_executor.settings import Settings, default_of, load_settings
from neucodec_assets.automation import tokens_condition
from neucodec_assets.tokens.checks import (
    TOKENS_CHECK_SPECS,
    complete_evaluation,
    completeness_of,
    shard_audio_ids,
    valid_evaluation,
)
from neucodec_assets.tokens.crashes import IN_FLIGHT_TAG, crashes_before, plan_after_crashes
from neucodec_assets.tokens.encoding import validate_existing
from neucodec_assets.tokens.hang_watchdog import HangWatchdog
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY, tokens_key
from neucodec_assets.tokens.partitions import shards_partitions
from neucodec_assets.tokens.shard_loop import FAILED, ShardOutcome, TokensRun
from resources.bucket import Bucket, BucketError
from resources.dagster_resources import BucketResource, EncoderResource
from resources.shard_reader import ShardError, decode_workers
from resources.tokens_file import TokensFileReport

MAX_RUNTIME_BASE_SECONDS = 900.0  # worker start and model load (a first download of the weights included)
HUNG_EXIT_CODE = 75
RUN_SETTING_GROUPS = ("bucket", "encoder", "run")  # what a tokens run reads: logged at its start, shown on the asset


def backfill_policy(shards_per_run: int = default_of("shards_per_run")) -> dg.BackfillPolicy:
    """How many shards a backfill puts into one run (one model load per run)."""
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=shards_per_run)


class TokensConfig(dg.Config):
    """Run config of `neucodec_tokens`."""

    force: bool = Field(
        default=False,
        description="Encode even where a valid tokens file made the same way (same encoding identity) exists.",
    )


def gpu_label() -> str:
    """The GPU the run worker was given (GPU run launcher) for the metadata."""
    from gpu_executor.launch.gpus import current_gpu_slot

    slot = current_gpu_slot()
    return (f"slot {slot['gpu_slot']}, CUDA_VISIBLE_DEVICES={slot['cuda_visible_devices']}, "
            f"host {slot['host']}")


def failed_shards_table(failed: list[tuple[str, str]]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"shard": key, "error": error}) for key, error in failed],
        schema=dg.TableSchema(columns=[dg.TableColumn("shard", "string"), dg.TableColumn("error", "string")]),
    )


def _check_only_evaluations(store: Bucket, key: str) -> list[dg.AssetCheckEvaluation]:
    """Re-read a shard's tokens file from the bucket and evaluate both checks (no encoding; the tar is read only
    when the file does not record it, or it changed since)."""
    try:
        data = store.read_bytes(tokens_key(key))
    except FileNotFoundError:
        report = TokensFileReport(problems=[f"no tokens file at {tokens_key(key)}"])
        return [valid_evaluation(key, report)]
    _, report = validate_existing(store, key, data)
    evaluations = [valid_evaluation(key, report)]
    try:
        evaluations.append(complete_evaluation(key, completeness_of(shard_audio_ids(store, key, report), report)))
    except (OSError, BucketError, ShardError) as exc:
        evaluations.append(dg.AssetCheckEvaluation(
            asset_key=TOKENS_ASSET_KEY, check_name="tokens_file_complete", passed=False, partition=key,
            description=f"cannot read the shard's audio.tar: {exc}", severity=dg.AssetCheckSeverity.ERROR,
        ))
    return evaluations


def _outcome_events(outcome: ShardOutcome) -> Iterator[dg.AssetMaterialization | dg.AssetCheckEvaluation]:
    """A shard with a current tokens file (encoded or existing): its materialization, then its check evaluations."""
    if outcome.result is not None:
        figures = outcome.result.figures
        yield dg.AssetMaterialization(asset_key=TOKENS_ASSET_KEY, partition=figures.prefix,
                                      metadata=figures.to_metadata())
        yield from outcome.result.checks


def _place_in_process_run(context: dg.AssetExecutionContext, settings: Settings) -> None:
    """`dagster asset materialize` runs in the caller's process, outside the queue and the launcher: on a GPU host
    it takes a GPU that no launched run holds (and says which), or refuses, naming the way to queue the shard."""
    from gpu_executor.launch.host_launcher import GpuRunLauncher, NoFreeSlotError, slot_label

    launcher = context.instance.run_launcher
    if settings.gpu_slot or not isinstance(launcher, GpuRunLauncher) or not launcher.has_gpus:
        return
    try:
        slot = launcher.adopt_local_run(context.run)
    except NoFreeSlotError as exc:
        keys = " ".join(context.partition_keys)
        raise dg.Failure(f"{exc} Queue the shard instead: neucodec-platform enqueue {keys}") from exc
    context.log.info(f"this run executes in the calling process; it takes {slot_label(slot)}, which no launched "
                     "run holds")


def _fail_hung_run(context: dg.AssetExecutionContext, message: str) -> None:
    """The watchdog's verdict: fail the run (run retries start it again) and end this process, whose stuck
    thread cannot be interrupted."""
    from gpu_executor.launch.dagster_internals import JobFailureData, RunFailureReason

    text = f"Run {context.run_id} is hung: {message}. The run is failed so that run retries start it afresh."
    context.log.error(text)
    context.instance.report_run_failed(
        context.run, text,
        job_failure_data=JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION,
                                        first_step_failure_event=None),
    )
    logging.shutdown()
    os._exit(HUNG_EXIT_CODE)


def _set_max_runtime(context: dg.AssetExecutionContext, shards: int, seconds_per_shard: float) -> None:
    """`dagster/max_runtime` from the shards this run holds, unless the run already has one: run monitoring then
    fails a run that outlives its budget however it got stuck."""
    if dg.MAX_RUNTIME_SECONDS_TAG in context.run.tags:
        return
    budget = int(MAX_RUNTIME_BASE_SECONDS + shards * seconds_per_shard)
    context.instance.add_run_tags(context.run_id, {dg.MAX_RUNTIME_SECONDS_TAG: str(budget)})


def _plan_shards(context: dg.AssetExecutionContext, keys: list[str]) -> tuple[list[str], dict[str, str]]:
    """The run's shards in the order to encode them, and those not to encode again, after its parents' crashes."""
    if context.run.tags.get(IN_FLIGHT_TAG):  # inherited from the parent run this one retries
        context.instance.add_run_tags(context.run_id, {IN_FLIGHT_TAG: ""})
    plan = plan_after_crashes(keys, crashes_before(context.instance, context.run))
    if plan.suspects:
        context.log.warning(f"{len(plan.suspects)} shards were being encoded when an earlier try of this run died: "
                            f"{', '.join(plan.suspects)}; they are encoded last, after their run-mates")
    for key, why in plan.isolated.items():
        context.log.error(f"shard {key} is not encoded again: {why}")
    return plan.order, plan.isolated


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
            # New shards (partitions added by the discovery sensor) are requested once; failed ones are not
            # retried in a loop (backfill the failed partitions for that).
            automation_condition=tokens_condition(),
        )
    ],
    backfill_policy=backfill_policy(),  # definitions.py applies NEUCODEC_SHARDS_PER_RUN
    pool=GPU_POOL,
    can_subset=True,
)
def neucodec_tokens(
    context: dg.AssetExecutionContext, config: TokensConfig, bucket: BucketResource, encoder: EncoderResource,
) -> Iterator:
    keys = list(context.partition_keys)
    store = bucket.open()
    settings = load_settings()
    context.log.info("settings in effect: " + ", ".join(
        f"{k}={v}" for k, v in settings.in_effect(RUN_SETTING_GROUPS).items() if v != "unset"))
    order, isolated = _plan_shards(context, keys)
    _set_max_runtime(context, len(keys), settings.max_seconds_per_shard)
    _place_in_process_run(context, settings)
    loaded = encoder.load()
    context.log.info(
        f"{len(keys)} shards in this run; model {loaded.model_label} on {loaded.device} "
        f"(loaded in {loaded.load_seconds:.1f} s); bucket {store.url}"
    )
    failed: list[tuple[str, str]] = []
    with HangWatchdog(settings.hang_seconds, lambda message: _fail_hung_run(context, message)) as watchdog:
        shards = TokensRun(
            store, loaded, log=context.log.info, force=config.force, gpu=gpu_label(),
            extra_provenance={"dagster_run_id": context.run_id},
            decode_workers=decode_workers(settings),
            spool_dir=settings.spool_dir, watchdog=watchdog, progress_seconds=settings.progress_seconds,
            in_flight=lambda key: context.instance.add_run_tags(context.run_id, {IN_FLIGHT_TAG: key}),
        )
        for outcome in shards.run(order, isolated):
            yield from _outcome_events(outcome)
            if outcome.status == FAILED:
                failed.append((outcome.prefix, outcome.error or ""))
    if failed:
        raise dg.Failure(
            description=f"{len(failed)} of {len(keys)} shards failed: "
            + "; ".join(f"{k}: {e}" for k, e in failed[:5]),
            metadata={"failed_shards": failed_shards_table(failed),
                      "recorded_shards": dg.MetadataValue.int(len(keys) - len(failed))},
        )


@dg.multi_asset_check(specs=TOKENS_CHECK_SPECS, can_subset=True, name="neucodec_tokens_checks",
                      description="Re-read each shard's tokens file from the bucket and evaluate its checks "
                      "(no encoding, no GPU); encoding runs evaluate them as each file is written.")
def neucodec_tokens_checks(context: dg.AssetCheckExecutionContext, bucket: BucketResource) -> Iterator:
    store = bucket.open()
    selected_checks = set(context.selected_asset_check_keys)
    keys = list(context.partition_keys)
    context.log.info(f"checking the tokens files of {len(keys)} shards (no encoding)")
    for key in keys:
        for evaluation in _check_only_evaluations(store, key):
            if dg.AssetCheckKey(evaluation.asset_key, evaluation.check_name) in selected_checks:
                yield evaluation
