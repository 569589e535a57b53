"""The bucket interface shared by the S3/R2 and local-folder backends, and the shard layout of key prefixes."""

from __future__ import annotations

import abc
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gpu_executor.settings import default_of, load_settings
from resources.bucket.transfer import TransferMeter

AUDIO_TAR = "audio.tar"
METADATA_PARQUET = "metadata.parquet"
TOKENS_PARQUET = "neucodec_tokens.parquet"

DEFAULT_SHARD_LAYOUT = default_of("shard_layout")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class ObjectHead:
    """What a HEAD says about an object: enough to tell, without reading it, whether it changed since."""

    etag: str
    size: int


class BucketError(RuntimeError):
    """A bucket could not be opened or a request failed for good (after retries); the message says why."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard found in the bucket: its prefix (the partition key), dataset, language and tokens state."""

    prefix: str
    dataset: str
    language: str
    has_tokens: bool
    audio_bytes: int | None = None


@dataclass(frozen=True)
class ShardLayout:
    """Names the parts of a shard prefix, e.g. ``{dataset}/{language}/{shard}``.

    The template is matched against the last parts of a prefix (extra leading folders are ignored), so the
    same layout works under any bucket prefix. Parts a short prefix lacks are ``unknown``.
    """

    template: str = DEFAULT_SHARD_LAYOUT

    @classmethod
    def from_env(cls) -> "ShardLayout":
        """The layout of NEUCODEC_SHARD_LAYOUT, read now."""
        return cls(load_settings().shard_layout)

    def parse(self, prefix: str) -> dict[str, str]:
        fields = [f.strip("{}") for f in self.template.strip("/").split("/")]
        parts = [p for p in prefix.strip("/").split("/") if p]
        values = {f: UNKNOWN for f in fields}
        for field, part in zip(reversed(fields), reversed(parts)):
            values[field] = part
        return values

    def shard_info(self, prefix: str, has_tokens: bool, audio_bytes: int | None = None) -> ShardInfo:
        values = self.parse(prefix)
        return ShardInfo(prefix=prefix, dataset=values.get("dataset", UNKNOWN),
                         language=values.get("language", UNKNOWN), has_tokens=has_tokens,
                         audio_bytes=audio_bytes)


@dataclass(frozen=True)
class ShardPage:
    """One bounded stretch of a listing: the shards in it, how many keys it read, where it stopped."""

    shards: list[ShardInfo]
    keys_listed: int
    last_key: str  # every key up to this one (in listing order) has been read; "" when none was
    complete: bool  # True: the listing reached the end (or ``until``); False: the budget ran out first


def shards_from_keys(keys: Iterable[tuple[str, int]], layout: ShardLayout) -> list[ShardInfo]:
    """Every prefix holding an ``audio.tar``, from (key, size) pairs of a listing, sorted by prefix."""
    audio: dict[str, int] = {}
    tokens: set[str] = set()
    for key, size in keys:
        folder, _, name = key.rpartition("/")
        if not folder:
            continue  # a file at the very top is not a shard: a shard is a prefix
        if name == AUDIO_TAR:
            audio[folder] = size
        elif name == TOKENS_PARQUET:
            tokens.add(folder)
    return [layout.shard_info(p, p in tokens, audio[p]) for p in sorted(audio)]


def check_key(key: str) -> str:
    """Reject keys that would escape the bucket's prefix or address nothing."""
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise BucketError(f"invalid object key {key!r}: use a relative path like 'dataset/lang/shard/audio.tar'")
    return key


class Bucket(abc.ABC):
    """Where shards live. Keys are relative to the bucket's own prefix (or folder)."""

    url: str
    layout: ShardLayout

    def url_of(self, key: str) -> str:
        """Where an object lives, for people and for links in metadata (`s3://BUCKET/PREFIX/KEY`, `file:///...`)."""
        return f"{self.url}/{check_key(key)}"

    @abc.abstractmethod
    def list_keys(self, prefix: str = "", start_after: str = "") -> Iterable[tuple[str, int]]:
        """Every (key, size) under ``prefix`` (a key prefix, not necessarily a folder), in S3's order (UTF-8
        bytes), lazily, and only keys sorting after ``start_after``: so a listing can resume where one stopped."""

    def list_shards(self, prefix: str = "") -> list[ShardInfo]:
        """Every prefix under ``prefix`` that holds an ``audio.tar``, with dataset, language and tokens state."""
        return shards_from_keys(self.list_keys(prefix), self.layout)

    def list_shards_page(self, start_after: str = "", *, max_keys: int, deadline: float | None = None,
                         until: str | None = None, prefix: str = "") -> ShardPage:
        """The shards among the next ``max_keys`` keys after ``start_after`` (fewer when ``time.monotonic()``
        passes ``deadline``; none beyond ``until``).

        Bounded so that a sensor tick over a 100,000-shard bucket fits its timeout; ``last_key`` is where the
        next page starts. A page never stops inside a folder it has begun (the rest of ``last_key``'s folder is
        listed too), so a shard's ``audio.tar`` and ``neucodec_tokens.parquet`` land on the same page and
        ``has_tokens`` holds for shards whose folder holds only files.
        """
        keys: list[tuple[str, int]] = []
        last = start_after
        complete = True
        for key, size in self.list_keys(prefix, start_after=start_after):
            if until is not None and key > until:
                break
            spent = len(keys) >= max_keys or (deadline is not None and time.monotonic() >= deadline)
            if spent and keys and not key.startswith(last.rpartition("/")[0] + "/"):
                complete = False
                break
            keys.append((key, size))
            last = key
        return ShardPage(shards_from_keys(keys, self.layout), keys_listed=len(keys), last_key=last,
                         complete=complete)

    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; ``FileNotFoundError`` when there is no such object."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectHead:
        """ETag and size of an object in one request; ``FileNotFoundError`` when there is no such object."""

    @abc.abstractmethod
    def read_bytes(self, key: str) -> bytes:
        """The whole object: only for small objects (metadata, tokens files)."""

    @abc.abstractmethod
    def download_to(self, key: str, local_path: str | os.PathLike[str], meter: TransferMeter | None = None) -> Path:
        """Stream the object to a local file (written under a temporary name, then renamed); every read is counted
        on ``meter``."""

    @abc.abstractmethod
    def open_stream(self, key: str) -> BinaryIO:
        """A readable binary stream of the object; the caller closes it."""

    @abc.abstractmethod
    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        """Store a completed local file as ``key`` in one step: readers see the old object or the whole new one."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; no error when it does not exist."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
