"""The progress cache: what earlier passes read, with their cursors, beside the report in the bucket
(`<NEUCODEC_PROGRESS_PREFIX>/cache/`).

At 100,000 shards, reading every materialization, run record and metadata.parquet again on every refresh would be
the cost; with the cache a pass reads only what is newer than its cursors. It is derived data: deleting it only makes
the next pass slower. A cache that cannot be read because a request failed is left as it is (the pass reads from
scratch and does not save over it); one whose content is unusable (corrupt, an older version) is replaced.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields

import polars as pl

from neucodec_assets.progress.records import DoneShard, RunSpan, ShardDuration
from resources.bucket import Bucket, BucketError

CACHE_VERSION = 2  # 2: done shards know who encoded them, durations know a failed read
TABLES: dict[str, type] = {"done": DoneShard, "durations": ShardDuration, "runs": RunSpan}


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/cache/{name}"


@dataclass
class ProgressCache:
    done: dict[str, DoneShard] = field(default_factory=dict)
    event_cursor: int = 0  # storage id of the last materialization read
    durations: dict[str, ShardDuration] = field(default_factory=dict)
    runs: dict[str, RunSpan] = field(default_factory=dict)
    runs_updated: float = 0.0  # latest update time of the runs read

    def rows(self, name: str) -> Iterable[object]:
        return {"done": self.done, "durations": self.durations, "runs": self.runs}[name].values()

    def save(self, bucket: Bucket, prefix: str) -> None:
        """The tables first, the cursors last: a pass that dies between the writes leaves older cursors, whose
        next pass reads some records again (harmless), never newer cursors over older tables."""
        for name, kind in TABLES.items():
            rows = [asdict(row) for row in self.rows(name)]
            frame = pl.DataFrame(rows, schema=_schema(kind)) if rows else pl.DataFrame(schema=_schema(kind))
            buffer = io.BytesIO()
            frame.write_parquet(buffer)
            bucket.put_bytes(_key(prefix, f"{name}.parquet"), buffer.getvalue())
        cursors = {"version": CACHE_VERSION, "event_cursor": self.event_cursor, "runs_updated": self.runs_updated}
        bucket.put_bytes(_key(prefix, "cursors.json"), json.dumps(cursors).encode())


def _schema(kind: type) -> dict[str, type[pl.DataType]]:
    types = {"str": pl.Utf8, "str | None": pl.Utf8, "int": pl.Int64, "int | None": pl.Int64, "float": pl.Float64,
             "float | None": pl.Float64, "bool": pl.Boolean}
    return {f.name: types[str(f.type)] for f in fields(kind)}


@dataclass(frozen=True)
class LoadedCache:
    """The cache a pass starts from. ``note``: why it starts from nothing, when it does for a reason worth saying;
    ``may_save``: False when the stored cache could not be read this time, so that the pass leaves it alone."""

    cache: ProgressCache
    note: str | None = None
    may_save: bool = True


def load_cache(bucket: Bucket, prefix: str) -> LoadedCache:
    """The cache of an earlier pass; an empty one when there is none (the first pass) or it cannot be used."""
    try:
        cursors = json.loads(bucket.read_bytes(_key(prefix, "cursors.json")))
        tables = {name: pl.read_parquet(bucket.read_bytes(_key(prefix, f"{name}.parquet"))) for name in TABLES}
    except FileNotFoundError:
        return LoadedCache(ProgressCache())  # none yet, or deleted: a first pass
    except (BucketError, OSError) as exc:  # the request failed (a local folder's errors too): the cache may be fine
        return LoadedCache(ProgressCache(), f"the progress cache could not be read ({exc}): this pass read every "
                                            "record again and left the cache as it was", may_save=False)
    except (ValueError, pl.exceptions.PolarsError) as exc:
        return LoadedCache(ProgressCache(), f"the progress cache was unusable ({type(exc).__name__}) and is rebuilt")
    if not isinstance(cursors, dict) or cursors.get("version") != CACHE_VERSION:
        found = cursors.get("version") if isinstance(cursors, dict) else None
        return LoadedCache(ProgressCache(), f"the progress cache has version {found}, this code keeps version "
                                            f"{CACHE_VERSION}: it is rebuilt")

    def rows(name: str) -> list:
        kind = TABLES[name]
        names = {f.name for f in fields(kind)}
        return [kind(**{k: v for k, v in row.items() if k in names}) for row in tables[name].iter_rows(named=True)]

    try:
        cache = ProgressCache(
            done={r.key: r for r in rows("done")}, event_cursor=int(cursors["event_cursor"]),
            durations={r.key: r for r in rows("durations")},
            runs={r.run_id: r for r in rows("runs")}, runs_updated=float(cursors["runs_updated"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        return LoadedCache(ProgressCache(), f"the progress cache was unusable ({type(exc).__name__}) and is rebuilt")
    return LoadedCache(cache)
