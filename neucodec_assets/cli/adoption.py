"""Adoption: shards the old fleet (or an earlier deployment) already encoded become materialized partitions.

A shard is adopted when its tokens file exists and validates per the contract; its materialization metadata is
read from the file (rows, tokens, provenance, failures where the file lists them) and nothing is encoded. The
`tokens_file_valid` check is recorded with it (including whether token counts agree with the durations in
metadata.parquet: a disagreement fails the check but does not stop adoption, since those durations are the
dataset's own, possibly rounded, figures). Completeness is not evaluated here: the old fleet's files do not record
their tar's member ids, so it needs a full read of each tar from R2; a checks-only run of `neucodec_tokens`
evaluates it on demand. metadata.parquet is read once per shard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dagster as dg

from neucodec_assets.tokens.encoding import (
    existing_result,
    read_shard_metadata,
    validate_existing,
)
from neucodec_assets.tokens.metadata import STATUS_ADOPTED, TOKENS_ASSET_KEY, tokens_key
from resources.bucket import Bucket, BucketError, ShardInfo


@dataclass
class AdoptionReport:
    """Which shards were adopted, which were already materialized, and which files did not validate (and why)."""

    adopted: list[str] = field(default_factory=list)
    already_materialized: list[str] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)


def adopt_existing(
    instance: dg.DagsterInstance,
    bucket: Bucket,
    shards: Iterable[ShardInfo],
    *,
    force: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
) -> AdoptionReport:
    """Record each shard with a valid tokens file as materialized (runless events), unless it already is."""
    report = AdoptionReport()
    materialized = set() if force else set(instance.get_materialized_partitions(TOKENS_ASSET_KEY))
    for shard in shards:
        if not shard.has_tokens:
            continue
        if shard.prefix in materialized:
            report.already_materialized.append(shard.prefix)
            continue
        key = tokens_key(shard.prefix)
        try:
            data = bucket.read_bytes(key)
        except (FileNotFoundError, BucketError) as exc:
            report.invalid.append((shard.prefix, f"cannot read {key}: {exc}"))
            continue
        metadata = read_shard_metadata(bucket, shard.prefix)  # once: durations for the check, and the labels
        structural, validation = validate_existing(bucket, shard.prefix, data, metadata=metadata)
        del data
        if not structural.ok:
            reason = "; ".join(structural.problems)
            report.invalid.append((shard.prefix, reason))
            log(f"not adopted {shard.prefix}: {reason}")
            continue
        result = existing_result(bucket, shard.prefix, validation, status=STATUS_ADOPTED, with_completeness=False,
                                 metadata=metadata)
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                asset_key=TOKENS_ASSET_KEY, partition=shard.prefix, metadata=result.figures.to_metadata(),
                description="adopted: an existing tokens file that validates; not encoded here",
            )
        )
        for evaluation in result.checks:
            instance.report_runless_asset_event(evaluation)
        report.adopted.append(shard.prefix)
        log(f"adopted {shard.prefix}: {result.figures.segment_count} segments, {result.figures.total_tokens} tokens")
    return report
