"""What an alert says: one message per failed run, or one digest for many. Both are JSON that Slack incoming webhooks
and most chat tools accept (a `text` field), with the same facts as fields for machines."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import dagster as dg

from gpu_executor.launch.dagster_internals import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    BACKFILL_ID_TAG,
    PARTITION_NAME_TAG,
)
from gpu_executor.launch.names import GPU_TAG, HOST_TAG
from gpu_executor.settings import Settings

MAX_SHARDS_IN_TEXT = 10
MAX_ERROR_CHARS = 1500
MAX_KIND_CHARS = 160
# A digest's bounds: what it names one by one; the rest is counted.
DIGEST_KINDS = 10
DIGEST_RUNS = 5
DIGEST_SHARDS = 10
DIGEST_BACKFILLS = 5
OTHER = "other"
UI_URL_ENV = Settings.env_names("ui_url")[0]


def run_shard_keys(run: dg.DagsterRun, all_keys: Callable[[], Sequence[str]]) -> list[str]:
    """The shards a run was given, from the partition tags Dagster put on it (one key, or a range of keys);
    ``all_keys`` is called only for a range."""
    if PARTITION_NAME_TAG in run.tags:
        return [run.tags[PARTITION_NAME_TAG]]
    start, end = run.tags.get(ASSET_PARTITION_RANGE_START_TAG), run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    if start is None or end is None:
        return []
    keys = all_keys()
    if start in keys and end in keys:
        return list(keys[keys.index(start): keys.index(end) + 1])
    return [start, end]


def _failed_shards(step_failures: Sequence[dg.DagsterEvent]) -> list[dict[str, str]]:
    """The `failed_shards` table the tokens asset attaches to its Failure (shard and error per failed shard)."""
    rows: list[dict[str, str]] = []
    for event in step_failures:
        data = event.step_failure_data
        metadata = (data.user_failure_data.metadata if data and data.user_failure_data else None) or {}
        table = metadata.get("failed_shards")
        for record in getattr(table, "records", None) or []:
            rows.append({k: str(v) for k, v in record.data.items()})
    return rows


def _error_text(run_failure_message: str | None, step_failures: Sequence[dg.DagsterEvent]) -> str:
    for event in step_failures:
        data = event.step_failure_data
        if data is not None and data.user_failure_data is not None and data.user_failure_data.description:
            return f"{event.step_key}: {data.user_failure_data.description.strip()}"  # a dg.Failure's own words
        if data is not None and data.error is not None:
            return f"{event.step_key}: {data.error.message.strip()}"
    return (run_failure_message or "run failed").strip()


_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+")
_ID = re.compile(r"\b[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\b|\b[0-9a-f]{16,}\b")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")


def error_kind(error: str, shards: Sequence[str]) -> str:
    """The first line of an error with what differs between failures of one cause (shard keys, URLs, ids, numbers)
    blanked out, so that a digest counts failures by cause."""
    line = next((part.strip() for part in error.strip().splitlines() if part.strip()), "no error message")
    for key in sorted(shards, key=len, reverse=True):
        line = line.replace(key, "<shard>")
    line = _NUMBER.sub("N", _ID.sub("<id>", _URL.sub("<url>", line)))
    return line[:MAX_KIND_CHARS]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def utc_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def run_url(ui_url: str | None, run_id: str) -> str | None:
    return f"{ui_url.rstrip('/')}/runs/{run_id}" if ui_url else None


def failed_runs_url(ui_url: str | None) -> str | None:
    """The UI's run list filtered to failed runs."""
    return f"{ui_url.rstrip('/')}/runs?{urllib.parse.urlencode({'q[]': 'status:FAILURE'})}" if ui_url else None


def alert_message(run: dg.DagsterRun, failure: dg.EventLogEntry, step_failures: Sequence[dg.DagsterEvent],
                  all_keys: Callable[[], Sequence[str]], ui_url: str | None) -> dict:
    """The message of one failed run: Slack's `text`, and the same facts as fields."""
    shards = run_shard_keys(run, all_keys)
    failed = _failed_shards(step_failures)
    error = _error_text(failure.message, step_failures)[:MAX_ERROR_CHARS]
    named = [row.get("shard", "") for row in failed] or shards
    listed = ", ".join(named[:MAX_SHARDS_IN_TEXT]) + (f" and {len(named) - MAX_SHARDS_IN_TEXT} more"
                                                      if len(named) > MAX_SHARDS_IN_TEXT else "")
    url = run_url(ui_url, run.run_id)
    text = f"neucodec run {run.run_id} ({run.job_name}) failed"
    if listed:
        text += f"; {'failed shards' if failed else 'shards'}: {listed}"
    text += f"\n{error}"
    if url:
        text += f"\n{url}"
    # A failed shard's own error names the cause better than the run's summary of all of them.
    known = [*shards, *(row.get("shard", "") for row in failed)]
    kind = error_kind(failed[0].get("error", "") if failed else error, known)
    return {
        "type": "run_failure",
        "text": text,
        "run_id": run.run_id,
        "job": run.job_name,
        "status": run.status.value,
        "shards": shards,
        "failed_shards": failed,
        "error": error,
        "error_kind": kind,
        "failed_at": utc_text(failure.timestamp),
        "backfill": run.tags.get(BACKFILL_ID_TAG),
        "gpu": run.tags.get(GPU_TAG),
        "host": run.tags.get(HOST_TAG),
        "url": url,
    }


def _count(counts: dict[str, int], key: str, limit: int) -> None:
    """Counts ``key``; past ``limit`` distinct keys, new ones count as OTHER (a digest stays bounded)."""
    if key not in counts and len(counts) >= limit:
        key = OTHER
    counts[key] = counts.get(key, 0) + 1


@dataclass
class Digest:
    """Many failed runs in one message: counted by error kind, the first few runs and shards named. Its size is
    bounded however many runs it holds."""

    runs: int = 0
    shards: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    first_runs: list[dict] = field(default_factory=list)
    first_shards: list[str] = field(default_factory=list)
    backfills: dict[str, int] = field(default_factory=dict)
    first_failure_at: str | None = None
    last_failure_at: str | None = None

    def add(self, alert: dict) -> None:
        shards = [row.get("shard", "") for row in alert["failed_shards"]] or alert["shards"]
        self.runs += 1
        self.shards += len(shards)
        _count(self.kinds, alert["error_kind"], DIGEST_KINDS)
        if len(self.first_runs) < DIGEST_RUNS:
            self.first_runs.append({k: alert[k] for k in ("run_id", "job", "error_kind", "failed_at")})
        self.first_shards += shards[:DIGEST_SHARDS - len(self.first_shards)]
        if alert["backfill"]:
            _count(self.backfills, alert["backfill"], DIGEST_BACKFILLS)
        self.first_failure_at = self.first_failure_at or alert["failed_at"]
        self.last_failure_at = alert["failed_at"]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Digest:
        return cls(**data)

    def message(self, ui_url: str | None, why: str) -> dict:
        """The digest's JSON body; ``why`` says why these runs were not alerted one by one."""
        span = self.first_failure_at if self.first_failure_at == self.last_failure_at else (
            f"{self.first_failure_at} - {self.last_failure_at}")
        lines = [f"neucodec: {plural(self.runs, 'run')} failed ({span}), in one digest: {why}", "by error:"]
        lines += [f"  {n} x {kind}" for kind, n in sorted(self.kinds.items(), key=lambda kv: -kv[1])]
        lines.append("first runs: " + ", ".join(f"{r['run_id']} ({r['job']})" for r in self.first_runs)
                     + (f" and {self.runs - len(self.first_runs)} more" if self.runs > len(self.first_runs) else ""))
        if self.first_shards:
            lines.append("first shards: " + ", ".join(self.first_shards)
                         + (f" ({self.shards} in all)" if self.shards > len(self.first_shards) else ""))
        if self.backfills:
            lines.append("backfills: " + ", ".join(f"{b} ({plural(n, 'run')})" for b, n in self.backfills.items()))
        url = failed_runs_url(ui_url)
        where = url or (f"the Runs page of the Dagster UI, filtered by status Failure (set {UI_URL_ENV} for a "
                        "link); `neucodec-platform status` counts the failed shards")
        lines.append(f"failed runs: {where}")
        return {"type": "digest", "text": "\n".join(lines), "runs": self.runs, "shards": self.shards,
                "error_kinds": dict(self.kinds), "first_runs": list(self.first_runs),
                "first_shards": list(self.first_shards), "backfills": dict(self.backfills),
                "first_failure_at": self.first_failure_at, "last_failure_at": self.last_failure_at,
                "url": url, "where": where}
