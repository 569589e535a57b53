"""The shard loop of one `neucodec_tokens` run, as a plain class: testable without Dagster, one outcome per shard,
handed out as each shard is done (so the asset records it at once: a run that dies later loses none of it).

A run holds several shards (the backfill policy groups them) and one loaded model. Shards whose tokens file is
current are reported as existing without downloading their audio; the others are downloaded one ahead of the
encoder (ShardPrefetcher) and encoded in the order given. A shard that cannot be read fails alone; a shard named in
``isolated`` (it crashed its run before: tokens.crashes) fails alone without being encoded; an unexpected error
stops the loop and propagates, after the outcomes already handed out.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from neucodec_assets.tokens.encoding import (
    ShardResult,
    encode_shard,
    existing_result,
    existing_tokens,
)
from neucodec_assets.tokens.hang_watchdog import HangWatchdog
from neucodec_assets.tokens.prefetch import ShardPrefetcher
from resources.bucket import Bucket, BucketError
from resources.bucket.transfer import TransferMeter
from resources.dagster_resources import LoadedEncoder
from resources.shard_reader import ShardError, read_shard
from resources.tokens_file import TokensFileError

ENCODED = "encoded"
EXISTING = "existing"
FAILED = "failed"

# Errors that concern one shard only: the run goes on with its other shards.
SHARD_ERRORS = (ShardError, TokensFileError, BucketError, FileNotFoundError)

Log = Callable[[str], None]


@dataclass
class ShardOutcome:
    """What became of one shard: encoded or existing (with its figures and checks), or failed with the error."""

    prefix: str
    status: str
    result: ShardResult | None = None
    error: str | None = None


class TokensRun:
    """Encode (or recognise as done) the tokens files of several shards with one loaded encoder."""

    def __init__(
        self, store: Bucket, loaded: LoadedEncoder, *, log: Log, force: bool = False, gpu: str | None = None,
        extra_provenance: Mapping[str, str] | None = None, decode_workers: int = 2, spool_dir: str | None = None,
        watchdog: HangWatchdog | None = None, in_flight: Callable[[str], None] | None = None,
        progress_seconds: float = 30.0,
    ):
        self.store, self.loaded, self.log = store, loaded, log
        self.force, self.gpu = force, gpu
        self.extra_provenance = dict(extra_provenance or {})
        self.decode_workers, self.spool_dir = decode_workers, spool_dir
        self.watchdog = watchdog
        self.in_flight = in_flight  # told the shard being encoded ("" when none), for crash isolation
        self.progress_seconds = progress_seconds

    def _waiting_for(self, what: str, meter: TransferMeter | None = None) -> None:
        if self.watchdog is not None:
            self.watchdog.waiting_for(what, meter)

    def _mark_in_flight(self, prefix: str) -> None:
        if self.in_flight is not None:
            self.in_flight(prefix)

    def _failed(self, prefix: str, exc: BaseException | str) -> ShardOutcome:
        error = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.log(f"shard {prefix} failed: {error}")
        return ShardOutcome(prefix, FAILED, error=error)

    def _existing(self, prefix: str) -> ShardOutcome | None:
        """The outcome of a shard whose tokens file is current, None when it must be encoded."""
        if self.force:
            return None
        self._waiting_for(f"the existing tokens file of {prefix}")
        try:
            report = existing_tokens(self.store, prefix, self.loaded.provenance, self.log)
            if report is None:
                return None
            result = existing_result(self.store, prefix, report)
        except SHARD_ERRORS as exc:
            return self._failed(prefix, exc)
        self.log(f"{prefix}: a valid tokens file made the same way exists; not encoded again")
        return ShardOutcome(prefix, EXISTING, result)

    def _encode(self, fetched, workdir: Path) -> ShardOutcome:
        prefix = fetched.prefix
        if fetched.error is not None:
            return self._failed(prefix, str(fetched.error))
        self._waiting_for(f"shard {prefix} to be read and encoded (segment by segment)")
        beat = self.watchdog.beat if self.watchdog is not None else None
        self._mark_in_flight(prefix)  # before the first line that says so: a crash from here on names this shard
        self.log(f"{prefix}: encoding")
        try:
            with read_shard(fetched.source, prefix, workers=self.decode_workers) as reader:
                result = encode_shard(reader, self.store, self.loaded, workdir, self.log, gpu=self.gpu,
                                      extra_provenance=self.extra_provenance, on_segment=beat,
                                      audio_tar=fetched.audio_head)
        except SHARD_ERRORS as exc:
            self._mark_in_flight("")
            return self._failed(prefix, exc)
        self._mark_in_flight("")
        if fetched.fetch_seconds:
            result.figures.extra = {**result.figures.extra, "download_seconds": round(fetched.fetch_seconds, 3),
                                    "download_bytes": fetched.fetch_bytes}
        f = result.figures
        self.log(f"{prefix}: {f.segment_count} segments, {len(f.failed or [])} failed, "
                 f"{f.total_audio_seconds / 3600:.4f} h, {f.total_tokens} tokens, "
                 f"{f.real_time_factor or 0:.2f}x real time -> {f.output_key}")
        return ShardOutcome(prefix, ENCODED, result)

    def run(self, keys: Sequence[str], isolated: Mapping[str, str] | None = None) -> Iterator[ShardOutcome]:
        """Each shard's outcome as soon as it is done: existing ones first, then the others in ``keys``' order;
        a shard in ``isolated`` (shard -> why) that has no current tokens file fails with that reason, unencoded."""
        isolated = dict(isolated or {})
        to_encode = []
        for key in keys:
            outcome = self._existing(key)
            if outcome is not None:
                yield outcome
            elif key in isolated:
                yield self._failed(key, isolated[key])
            else:
                to_encode.append(key)
        with tempfile.TemporaryDirectory(prefix="neucodec-tokens-", dir=self.spool_dir) as work:
            with ShardPrefetcher(self.store, to_encode, Path(work) / "prefetch", log=self.log,
                                 progress_seconds=self.progress_seconds) as prefetcher:
                upcoming = iter(to_encode)

                def expect_download() -> None:
                    key = next(upcoming, None)
                    if key is not None:
                        self._waiting_for(f"the download of {self.store.url}/{key}/audio.tar", prefetcher.meter(key))

                expect_download()
                for fetched in prefetcher:
                    yield self._encode(fetched, Path(work))
                    expect_download()
