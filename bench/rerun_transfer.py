#!/usr/bin/env python
"""Benchmark: bytes a re-run transfers over shards that are already done, against the shards' own bytes.

moto's S3 server over HTTP holds N sample shards (espeak-ng speech at 16/44.1/48 kHz, mono and stereo FLAC, as
`neucodec-platform sample-bucket` writes them). Each shard is made done without running the model: a valid tokens
file with the random model's real provenance and the record of the shard's audio.tar (ETag, size, member ids),
written through the project's TokensFileWriter and uploaded in one PUT, exactly as encode_shard records it; only
the codes are arbitrary (nothing here reads them). Then the project's "is this shard done" path - the
`existing_tokens` + `existing_result` pair the tokens asset calls, completeness check included - runs over every
shard with the project's S3 client pointed at a byte-counting proxy in front of moto, and the bytes that crossed
the wire (both ways, headers included) are compared with the shards' bytes (audio.tar + metadata.parquet).

For comparison it then strips the record from every tokens file (as files written before it existed, or by the
old fleet) and measures the same path again: that one lists each tar by reading it whole.

    .venv/bin/python bench/rerun_transfer.py                 # 100 shards of 12 segments (~2.5 min of audio each)
    .venv/bin/python bench/rerun_transfer.py --shards 20 --no-compare
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MOTO_KEYS = {"R2_ACCESS_KEY_ID": "testing", "R2_SECRET_ACCESS_KEY": "testing"}  # moto's placeholders


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("moto server did not start")


def mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


def rerun(bucket_name: str, prefixes: list[str], provenance: dict, proxy) -> dict:
    """The asset's per-shard decision over every shard, through the proxy; what it found and what it moved."""
    from neucodec_assets.tokens.encoding import existing_result, existing_tokens
    from resources.bucket import S3Bucket
    from tests.fixtures.transfer import s3_client_via

    proxy.reset()
    via = S3Bucket(bucket_name, "corpus", client=s3_client_via(proxy.url))
    logs: list[str] = []
    done = checks_passed = 0
    start = time.perf_counter()
    for prefix in prefixes:
        report = existing_tokens(via, prefix, provenance, logs.append)
        if report is None:
            continue
        result = existing_result(via, prefix, report)
        done += 1
        checks_passed += all(c.passed for c in result.checks) and len(result.checks) == 2
    wall = time.perf_counter() - start
    exchanges = proxy.snapshot()
    by_kind: Counter = Counter()
    bytes_by_kind: Counter = Counter()
    for e in exchanges:
        kind = f"{e.method} {e.key.rpartition('/')[2]}"
        by_kind[kind] += 1
        bytes_by_kind[kind] += e.sent_bytes + e.received_bytes
    return {"done": done, "checks_passed": checks_passed, "wall": wall, "logs": logs, "requests": by_kind,
            "bytes_by_kind": bytes_by_kind, "total": sum(bytes_by_kind.values()),
            "received": sum(e.received_bytes for e in exchanges), "sent": sum(e.sent_bytes for e in exchanges)}


def print_rerun(title: str, figures: dict, shard_bytes: int, shards: int) -> None:
    print(f"\n{title}")
    print(f"  shards judged done: {figures['done']}/{shards}, both checks passed: {figures['checks_passed']}, "
          f"{figures['wall']:.2f} s")
    for kind, count in sorted(figures["requests"].items()):
        print(f"  {count:5d} x {kind:30s} {mib(figures['bytes_by_kind'][kind]):>14s}")
    print(f"  transferred: {figures['total']:,} bytes ({mib(figures['total'])}; received {figures['received']:,}, "
          f"sent {figures['sent']:,}) = {100 * figures['total'] / shard_bytes:.3f}% of the shards' "
          f"{shard_bytes:,} bytes")
    for line in figures["logs"][:3]:
        print(f"  log: {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--segments", type=int, default=12, help="segments per shard (default 12)")
    parser.add_argument("--no-compare", action="store_true", help="skip the run over files without the record")
    args = parser.parse_args()

    import os

    proc, endpoint = start_moto()
    os.environ.update({"R2_ENDPOINT_URL": endpoint, **MOTO_KEYS, "AWS_DEFAULT_REGION": "auto"})
    try:
        import boto3

        from resources.bucket import AUDIO_TAR, METADATA_PARQUET, open_bucket
        from resources.dagster_resources import EncoderResource
        from resources.sample_bucket import write_sample_bucket
        from resources.tokens_file import expected_token_count, read_tokens_file
        from tests.fixtures.transfer import CountingProxy, write_done_tokens

        name = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=name)
        bucket = open_bucket(f"s3://{name}/corpus")

        print("loading the random full-size model on the CPU for its provenance ...", flush=True)
        loaded = EncoderResource(model="random", device="cpu", precision="fp32").load()
        provenance = {**loaded.provenance, "dagster_run_id": "bench"}
        identity = {k: provenance[k] for k in ("precision", "acoustic_activation", "device_class", "chunking")}
        print(f"  provenance identity (part): {identity}")

        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="rerun-bench-") as tmp:
            report = write_sample_bucket(bucket, shards=args.shards, segments_per_shard=args.segments, seed=7)
            for shard in report.shards:
                write_done_tokens(bucket, shard.prefix, [expected_token_count(s.duration) for s in shard.segments],
                                  [s.segment_id for s in shard.segments], provenance, tmp)
        prefixes = [s.prefix for s in report.shards]
        tar_bytes = sum(bucket.size(f"{p}/{AUDIO_TAR}") for p in prefixes)
        meta_bytes = sum(bucket.size(f"{p}/{METADATA_PARQUET}") for p in prefixes)
        token_bytes = sum(bucket.size(f"{p}/neucodec_tokens.parquet") for p in prefixes)
        audio_s = sum(seg.duration for s in report.shards for seg in s.segments)
        shard_bytes = tar_bytes + meta_bytes
        print(f"{len(prefixes)} done shards written in {time.perf_counter() - start:.1f} s: {audio_s / 60:.1f} min "
              f"of audio; audio.tar {mib(tar_bytes)}, metadata.parquet {mib(meta_bytes)}, tokens files "
              f"{mib(token_bytes)} ({token_bytes / audio_s:.0f} B per audio second; tars "
              f"{tar_bytes / audio_s / 1024:.1f} KiB per audio second)")

        with CountingProxy(endpoint) as proxy:
            with_record = rerun(name, prefixes, provenance, proxy)
            print_rerun("re-run over done shards (tokens files keep their tar's ETag, size and member ids):",
                        with_record, shard_bytes, len(prefixes))
            if not args.no_compare:
                with tempfile.TemporaryDirectory(prefix="rerun-bench-") as tmp:
                    import numpy as np

                    from resources.tokens_file import TokensFileWriter

                    for p in prefixes:  # the same files without the record, as before it existed
                        frame, meta = read_tokens_file(bucket.read_bytes(f"{p}/neucodec_tokens.parquet"))
                        writer = TokensFileWriter(Path(tmp) / p / "t.parquet", meta["provenance"])
                        for sid, blob in zip(frame["segment_id"], frame["neucodec_tokens"]):
                            writer.add(sid, np.frombuffer(blob, dtype="<u2"))
                        bucket.upload_file(writer.close(meta["failures"]), f"{p}/neucodec_tokens.parquet")
                without = rerun(name, prefixes, provenance, proxy)
                print_rerun("the same re-run over files without the record (old fleet, adopted): tars read whole",
                            without, shard_bytes, len(prefixes))
        pct = 100 * with_record["total"] / shard_bytes
        print(f"\nRESULT: a re-run over {len(prefixes)} done shards transferred {with_record['total']:,} bytes = "
              f"{pct:.3f}% of the shards' {shard_bytes:,} bytes (target < 1%: {'met' if pct < 1 else 'NOT met'})")
        return 0 if pct < 1 and with_record["done"] == len(prefixes) else 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    raise SystemExit(main())
