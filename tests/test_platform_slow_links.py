"""Slow links are alive, dead parts are hangs: the hang watchdog counts bytes as they arrive, per ranged part.

A real shard is 5-10 GB and a rented box's link 10-60 MB/s: minutes per tar, far past any sane hang limit. The
download is in parallel ranged parts; its file is allocated to full size first, so file sizes say nothing. Here the
S3 endpoint is moto behind a proxy that sends object bodies slowly but steadily (a slow link), or never answers one
part (a dead one). The silent endpoint (nothing answers at all) is tests/test_platform_cli.py's hung run.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import soundfile as sf
import soxr

from neucodec_assets.tokens.discovery import add_shard_partitions
from neucodec_assets.tokens.hang_watchdog import HangWatchdog
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY, metadata_value, tokens_key
from resources.audio import load_wave
from resources.bucket import AUDIO_TAR, METADATA_PARQUET, LocalBucket, RetryPolicy, S3Bucket
from resources.bucket.transfer import TransferMeter
from resources.tokens_file import validate_tokens_file
from tests.fixtures.platform import DAGSTER, REPO_ROOT, deployment_env
from tests.fixtures.transfer import CountingProxy, s3_client_via

# Above the longest step without a beat (one encode call of the full-size model: seconds on a busy 2-core box),
# well below the download's time.
HANG_SECONDS = 15.0
LINK_BYTES_PER_SECOND = 6 * 1024  # per connection: a part's stream gets a byte well within the hang limit
SLICE_SECONDS = 0.05
PART_MIB = 0.125  # a ~0.6 MB tar downloads in 5 parts, 4 at a time
DEAD_PART_HANG_SECONDS = 3.0


def test_a_meter_reports_its_stalest_open_stream():
    now = [100.0]
    meter = TransferMeter(expected=3 * 2**20, clock=lambda: now[0])
    with meter.stream() as fast, meter.stream() as slow:
        slow(2**19)
        for _ in range(4):
            now[0] += 1.0
            fast(2**19)
        state = meter.state()
        assert (state.received, state.open_streams) == (5 * 2**19, 2)
        assert state.idle_seconds == 4.0  # the slow stream's last byte, though the fast one got one just now
        assert state.describe() == "2.5 of 3.0 MiB in 4 s (0.62 MiB/s, 2 streams)"
    now[0] += 2.0
    assert meter.state().idle_seconds == 2.0 and meter.state().open_streams == 0  # since the streams closed


def _heavy_shard(tiny_shards_dir, prefix: str, dest: LocalBucket) -> int:
    """A shard of many bytes and little audio: short slices of real speech as 192 kHz stereo float64 WAV members
    (a ~0.6 MB tar, big enough for ranged parts, whose segments each encode in a fraction of a second on these CPUs,
    far below the hang limit); returns the tar's size."""
    src_root, shards = tiny_shards_dir
    src = LocalBucket(src_root)
    source = shards[0]
    buf, rows = io.BytesIO(), []
    with tarfile.open(fileobj=io.BytesIO(src.read_bytes(f"{source.prefix}/{AUDIO_TAR}"))) as tar_in, \
            tarfile.open(fileobj=buf, mode="w") as tar_out:
        for member in (m for m in tar_in.getmembers() if m.isfile()):
            wave = load_wave(tar_in.extractfile(member).read()).wave
            for n, start in enumerate((0.2, 0.4)):
                piece = wave[int(start * 16_000): int((start + SLICE_SECONDS) * 16_000)]
                hi = soxr.resample(piece, 16_000, 192_000, quality="HQ").astype(np.float64)
                out = io.BytesIO()
                sf.write(out, np.stack([hi, hi], axis=1), 192_000, format="WAV", subtype="DOUBLE")
                segment_id = f"{Path(member.name).stem}_{n}"
                info = tarfile.TarInfo(f"{segment_id}.wav")
                info.size = out.tell()
                out.seek(0)
                tar_out.addfile(info, out)
                rows.append({"segment_id": segment_id, "text": "a slice", "language": "en", "speaker": "s1",
                             "duration": SLICE_SECONDS})
    dest.put_bytes(f"{prefix}/{AUDIO_TAR}", buf.getvalue())
    out = io.BytesIO()
    pl.DataFrame(rows).write_parquet(out)
    dest.put_bytes(f"{prefix}/{METADATA_PARQUET}", out.getvalue())
    return len(buf.getvalue())


def test_a_slow_but_steady_download_is_not_a_hang(pg_dagster_home, pg_instance, tiny_shards_dir, s3_env, tmp_path):
    """`dagster asset materialize` of a shard whose tar comes down in ranged parts over a link that takes several
    times the hang limit: the run succeeds, and its log says how the download goes."""
    staging = LocalBucket(tmp_path / "staging")
    prefix = "slowlink/en/shard_000001"
    size = _heavy_shard(tiny_shards_dir, prefix, staging)
    part_bytes = int(PART_MIB * 2**20)
    assert size >= 4 * part_bytes  # several parts in parallel, as every real shard
    bucket = S3Bucket(s3_env["bucket"])
    for name in (AUDIO_TAR, METADATA_PARQUET):
        bucket.upload_file(staging.path(f"{prefix}/{name}"), f"{prefix}/{name}")
    add_shard_partitions(pg_instance, [prefix])

    with CountingProxy(s3_env["R2_ENDPOINT_URL"], bytes_per_second=LINK_BYTES_PER_SECOND) as link:
        env = {**deployment_env(tmp_path / "unused"), "NEUCODEC_BUCKET": f"s3://{s3_env['bucket']}",
               "R2_ENDPOINT_URL": link.url, "NEUCODEC_HANG_SECONDS": str(HANG_SECONDS),
               "NEUCODEC_DOWNLOAD_PART_MIB": str(PART_MIB), "NEUCODEC_PROGRESS_SECONDS": "2",
               "NEUCODEC_ROUNDTRIP_SAMPLES": "0"}
        start = time.monotonic()
        done = subprocess.run(
            [DAGSTER, "asset", "materialize", "-m", "neucodec_assets.definitions", "--select", "neucodec_tokens",
             "--partition", prefix], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - start
        tar_gets = [e for e in link.snapshot() if e.method == "GET" and e.key.endswith(AUDIO_TAR)]
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert len(tar_gets) >= 4 and sum(e.body_bytes for e in tar_gets) == size  # ranged parts, each byte once
    assert f"downloading s3://{s3_env['bucket']}/{prefix}/{AUDIO_TAR}:" in output and "MiB/s" in output

    record = pg_instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, asset_partitions=[prefix]), limit=1).records[0]
    metadata = record.asset_materialization.metadata
    download_seconds = metadata_value(metadata, "download_seconds")
    print(f"download {size} bytes in {download_seconds:.1f} s through a {LINK_BYTES_PER_SECOND} B/s-per-connection "
          f"link, hang limit {HANG_SECONDS:g} s; run wall {wall:.1f} s")
    assert download_seconds > 2 * HANG_SECONDS  # the link really was slower than the hang limit
    assert metadata_value(metadata, "download_bytes") == size
    assert validate_tokens_file(bucket.read_bytes(tokens_key(prefix))).ok


def test_one_dead_part_trips_the_watchdog_while_the_others_flow(s3_env, tmp_path):
    """The third ranged part is never answered; the other parts come down. The watchdog fires on the dead part,
    naming the download, although bytes kept arriving on the other streams."""
    key = "deadpart/en/shard_000001/audio.tar"
    payload = np.random.default_rng(3).integers(0, 256, size=6 * 2**18, dtype=np.uint8).tobytes()
    part = 2**18

    def third_part(method: str, object_key: str, headers) -> bool:
        return method == "GET" and object_key.endswith(key) and headers.get("Range", "").startswith(
            f"bytes={2 * part}-")

    with CountingProxy(s3_env["R2_ENDPOINT_URL"], bytes_per_second=256 * 1024, stall=third_part) as link:
        bucket = S3Bucket(s3_env["bucket"], client=s3_client_via(link.url),
                          retry=RetryPolicy(max_attempts=1))
        bucket.put_bytes(key, payload)
        bucket.download_part_bytes = part
        meter, fired = TransferMeter(), threading.Event()
        messages: list[str] = []

        def on_hang(message: str) -> None:
            messages.append(message)
            fired.set()

        download = threading.Thread(target=lambda: _try(bucket.download_to, key, tmp_path / "tar", meter),
                                    daemon=True)
        with HangWatchdog(DEAD_PART_HANG_SECONDS, on_hang, poll_seconds=0.2) as watchdog:
            watchdog.waiting_for(f"the download of {key}", meter)
            download.start()
            assert fired.wait(timeout=60), "the watchdog never fired on a part that got no answer"
        state = meter.state()
        assert link.stalled == 1
        assert state.received >= 3 * part  # the parts after the dead one came down meanwhile
        assert "no progress for" in messages[0] and f"the download of {key}" in messages[0]
        assert "streams" in messages[0]
    download.join(timeout=30)
    assert not (tmp_path / "tar").exists()  # no partial file


def _try(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - the dead part fails the download once the proxy closes; that is expected
        pass
