"""A local folder as the bucket: the embedded default, so the whole pipeline runs on a fresh machine."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from resources.bucket.base import (
    Bucket,
    BucketError,
    ObjectHead,
    ShardLayout,
    check_key,
)
from resources.bucket.transfer import TransferMeter


class LocalBucket(Bucket):
    """Objects are files under ``root``; writes go to a temporary file in the same folder and are renamed."""

    def __init__(self, root: str | os.PathLike[str], layout: ShardLayout | None = None):
        self.root = Path(root).expanduser().resolve()  # created by the first write, not by opening
        self.url = self.root.as_uri()
        self.layout = layout or ShardLayout.from_env()

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    def list_keys(self, prefix: str = "", start_after: str = "") -> Iterator[tuple[str, int]]:
        """Keys in S3's order, so a cursor means the same on both backends: a folder sorts as its name plus
        ``/`` (``b-2`` before ``b/x``), and folders wholly at or before ``start_after`` are not entered."""
        prefix = prefix.lstrip("/")
        folder, _, _ = prefix.rpartition("/")
        start = self.root / folder if folder else self.root
        if not self.root.is_dir():
            raise BucketError(
                f"bucket folder {self.root} does not exist: set NEUCODEC_BUCKET, or write sample shards there "
                f"with `neucodec-platform sample-bucket {self.root}`"
            )
        if not start.is_dir():
            return
        yield from self._walk(start, f"{folder}/" if folder else "", prefix, start_after)

    def _walk(self, folder: Path, rel: str, prefix: str, start_after: str) -> Iterator[tuple[str, int]]:
        with os.scandir(folder) as it:
            entries = []
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    entries.append((f"{rel}{entry.name}/", True, entry))
                elif entry.is_file() and not entry.name.startswith(".tmp-upload-"):
                    entries.append((f"{rel}{entry.name}", False, entry))
        entries.sort(key=lambda e: e[0])
        for key, is_dir, entry in entries:
            if is_dir:
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                if start_after >= key and not start_after.startswith(key):
                    continue  # every key in it sorts at or before start_after
                yield from self._walk(Path(entry.path), key, prefix, start_after)
            elif key.startswith(prefix) and key > start_after:
                yield key, entry.stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.url}/{key}")
        return path.stat().st_size

    def head(self, key: str) -> ObjectHead:
        """A local file has no ETag: size, modification time (ns) and inode stand in for it; a rewrite changes them."""
        path = self.path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.url}/{key}") from None
        if not path.is_file():
            raise FileNotFoundError(f"{self.url}/{key}")
        return ObjectHead(etag=f"local-{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ino:x}", size=st.st_size)

    def read_bytes(self, key: str) -> bytes:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.url}/{key}")
        return path.read_bytes()

    def download_to(self, key: str, local_path: str | os.PathLike[str], meter: TransferMeter | None = None) -> Path:
        src = self.path(key)
        if not src.is_file():
            raise FileNotFoundError(f"{self.url}/{key}")
        dest = Path(local_path)
        meter = meter if meter is not None else TransferMeter()
        meter.expected = src.stat().st_size
        with meter.stream() as received:
            self._atomic_write(dest, lambda out: _copy_from(src, out, received))
        return dest

    def open_stream(self, key: str) -> BinaryIO:
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(f"{self.url}/{key}")
        return open(path, "rb")

    def upload_file(self, local_path: str | os.PathLike[str], key: str) -> None:
        src = Path(local_path)
        if not src.is_file():
            raise BucketError(f"cannot upload {src}: not a file")
        self._atomic_write(self.path(key), lambda out: _copy_from(src, out))

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(self.path(key), lambda out: out.write(data))

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    @staticmethod
    def _atomic_write(dest: Path, write) -> None:
        """Write to a hidden temporary file next to ``dest`` and rename it: no partial file is ever visible."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-upload-", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _copy_from(src: Path, out: BinaryIO, received: Callable[[int], None] | None = None) -> None:
    with open(src, "rb") as f:
        while chunk := f.read(8 << 20):
            out.write(chunk)
            if received is not None:
                received(len(chunk))
