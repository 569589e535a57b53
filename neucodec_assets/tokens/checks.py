"""Asset checks on each shard's tokens file: valid per the contract, and complete (every segment of the shard's
audio.tar is either in the file or reported as failed with a reason).

The checks are declared on `neucodec_tokens` (partitioned like it) and evaluated per partition by the asset itself,
right after it writes or finds a tokens file; a run that selects only the checks re-reads the files from the bucket.
"""

from __future__ import annotations

import tarfile
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dagster as dg

from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
from neucodec_assets.tokens.partitions import shards_partitions
from resources.bucket import AUDIO_TAR, Bucket, LocalBucket, ObjectHead
from resources.shard_reader import ShardError, member_segment_id
from resources.tokens_file import AudioTarRecord, TokensFileReport

VALID_CHECK = "tokens_file_valid"
COMPLETE_CHECK = "tokens_file_complete"
EXAMPLES = 20

# Partitioned check specs are a Dagster "preview" feature (1.13): they give each shard its own check status,
# which is what a per-file check means. The warning is silenced here, where the choice is made.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=dg.PreviewWarning)
    TOKENS_CHECK_SPECS = [
        dg.AssetCheckSpec(
            VALID_CHECK, asset=TOKENS_ASSET_KEY, partitions_def=shards_partitions,
            description="The tokens file has exactly the contract's three columns and types, no duplicate ids, "
            "token_count == len(neucodec_tokens) / 2, and counts that agree with the audio durations.",
        ),
        dg.AssetCheckSpec(
            COMPLETE_CHECK, asset=TOKENS_ASSET_KEY, partitions_def=shards_partitions,
            description="Every audio member of the shard's audio.tar is in the tokens file or reported as "
            "failed with a reason; the file has no row for a segment the tar does not hold.",
        ),
    ]
VALID_CHECK_KEY = dg.AssetCheckKey(TOKENS_ASSET_KEY, VALID_CHECK)
COMPLETE_CHECK_KEY = dg.AssetCheckKey(TOKENS_ASSET_KEY, COMPLETE_CHECK)


def _examples(ids: Iterable[str]) -> str:
    ids = sorted(ids)
    more = f" (+{len(ids) - EXAMPLES} more)" if len(ids) > EXAMPLES else ""
    return ", ".join(ids[:EXAMPLES]) + more


def valid_evaluation(prefix: str, report: TokensFileReport) -> dg.AssetCheckEvaluation:
    """The `tokens_file_valid` evaluation of one partition from a validation report."""
    metadata: dict[str, object] = {
        "rows": dg.MetadataValue.int(report.rows),
        "total_tokens": dg.MetadataValue.int(report.total_tokens),
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in report.problems) or "none"),
    }
    if report.duration_mismatches:
        metadata["duration_mismatches"] = "; ".join(report.duration_mismatches)
    if report.bad_token_counts:
        metadata["bad_token_counts"] = "; ".join(report.bad_token_counts)
    return dg.AssetCheckEvaluation(
        asset_key=TOKENS_ASSET_KEY, check_name=VALID_CHECK, passed=report.ok, partition=prefix,
        metadata=metadata, severity=dg.AssetCheckSeverity.ERROR,
        description=None if report.ok else "; ".join(report.problems),
    )


@dataclass(frozen=True)
class Completeness:
    """Which audio segments the tar holds against what the tokens file accounts for."""

    audio_ids: Counter  # segment id -> number of audio members with it
    file_ids: frozenset[str]
    failed_ids: frozenset[str]

    @property
    def unaccounted(self) -> set[str]:
        return set(self.audio_ids) - self.file_ids - self.failed_ids

    @property
    def extra_rows(self) -> set[str]:
        return set(self.file_ids) - set(self.audio_ids)

    @property
    def duplicates_with_rows(self) -> set[str]:
        return {sid for sid, n in self.audio_ids.items() if n > 1 and sid in self.file_ids}

    @property
    def passed(self) -> bool:
        return not (self.unaccounted or self.extra_rows or self.duplicates_with_rows)


def complete_evaluation(prefix: str, completeness: Completeness) -> dg.AssetCheckEvaluation:
    """The `tokens_file_complete` evaluation of one partition."""
    c = completeness
    problems = []
    if c.unaccounted:
        problems.append(f"{len(c.unaccounted)} segments neither encoded nor reported: {_examples(c.unaccounted)}")
    if c.extra_rows:
        problems.append(f"{len(c.extra_rows)} rows for segments not in {AUDIO_TAR}: {_examples(c.extra_rows)}")
    if c.duplicates_with_rows:
        problems.append(f"{len(c.duplicates_with_rows)} duplicate segment ids have a row: "
                        f"{_examples(c.duplicates_with_rows)}")
    return dg.AssetCheckEvaluation(
        asset_key=TOKENS_ASSET_KEY, check_name=COMPLETE_CHECK, passed=c.passed, partition=prefix,
        metadata={
            "audio_segments": dg.MetadataValue.int(len(c.audio_ids)),
            "encoded": dg.MetadataValue.int(len(c.file_ids)),
            "reported_failed": dg.MetadataValue.int(len(c.failed_ids)),
            "unaccounted": dg.MetadataValue.int(len(c.unaccounted)),
        },
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or None,
    )


def tar_audio_ids(bucket: Bucket, prefix: str) -> Counter:
    """Segment ids of the audio members of a shard's audio.tar, with their member counts (headers only where
    the bucket is a local folder; streamed through otherwise)."""
    key = f"{prefix.rstrip('/')}/{AUDIO_TAR}"
    ids: Counter = Counter()
    stream = None if isinstance(bucket, LocalBucket) else bucket.open_stream(key)
    try:
        tar = tarfile.open(bucket.path(key), mode="r:") if stream is None else tarfile.open(fileobj=stream, mode="r|")
        with tar:
            for member in tar:
                sid = member_segment_id(member)
                if sid is not None:
                    ids[sid] += 1
    except (tarfile.TarError, EOFError) as exc:
        raise ShardError(f"{AUDIO_TAR} of shard {prefix} cannot be listed: {exc}") from exc
    finally:
        if stream is not None:
            stream.close()
    return ids


def recorded_audio_ids(bucket: Bucket, prefix: str, record: AudioTarRecord | None, *,
                       head: ObjectHead | None = None) -> Counter | None:
    """The member ids a tokens file recorded, when the shard's audio.tar is still the tar it recorded (same ETag and
    size: one HEAD, or ``head`` when the caller just took it); None when there is no record or the tar changed."""
    if record is None:
        return None
    if head is None:
        try:
            head = bucket.head(f"{prefix.rstrip('/')}/{AUDIO_TAR}")
        except FileNotFoundError:
            return None
    return Counter(record.member_ids) if record.matches(head.etag, head.size) else None


def shard_audio_ids(bucket: Bucket, prefix: str, report: TokensFileReport, *,
                    head: ObjectHead | None = None) -> Counter:
    """Audio member ids for the completeness check: from the file's record when the tar is unchanged (no download),
    else listed from the tar itself (files without a record, or a tar that changed since)."""
    recorded = recorded_audio_ids(bucket, prefix, report.audio_tar, head=head)
    return recorded if recorded is not None else tar_audio_ids(bucket, prefix)


def completeness_of(audio_ids: Mapping[str, int], report: TokensFileReport) -> Completeness:
    return Completeness(
        audio_ids=Counter(audio_ids),
        file_ids=frozenset(report.segment_ids),
        failed_ids=frozenset(str(f.get("segment_id", "")) for f in report.failures),
    )
