#!/usr/bin/env python
"""Cost of the decode round trip against the encode time of a shard, in one process.

A generated shard (real espeak-ng speech, the sample bucket's formats) is encoded by ``encode_shard`` with the round
trip on (``NEUCODEC_ROUNDTRIP_SAMPLES``); the shard's own metadata gives the encode wall time and the round-trip
time (decode + the four figures + the WAV uploads). The decoder is loaded before, once, as a run loads it once for
all its shards; its load time is printed apart.

The round trip's cost grows with the sampled audio (k segments) and the encode time with the whole shard, so a
small bench shard overstates the share: the script also extrapolates, from the measured per-audio-second costs, to
a realistic shard (default 28 h in 10,000 segments) and prints the largest sample that keeps it under 2%.

    .venv/bin/python bench/roundtrip_bench.py                       # random model on the CPU, 8 segments
    NEUCODEC_MODEL=neuphonic/neucodec NEUCODEC_DEVICE=cuda .venv/bin/python bench/roundtrip_bench.py --segments 200
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--segments", type=int, default=8, help="segments in the bench shard (default 8, up to 6 s each)")
    ap.add_argument("--samples", type=int, default=4, help="round-trip sample (default 4)")
    ap.add_argument("--shard-hours", type=float, default=28.0, help="realistic shard to extrapolate to (hours)")
    ap.add_argument("--shard-segments", type=int, default=10_000, help="segments of that shard")
    args = ap.parse_args()

    os.environ.setdefault("NEUCODEC_MODEL", "random")
    os.environ.setdefault("NEUCODEC_DEVICE", "cpu")
    os.environ["NEUCODEC_ROUNDTRIP_SAMPLES"] = str(args.samples)
    from neucodec_assets.tokens.encoding import encode_shard
    from neucodec_assets.tokens.metadata import metadata_value
    from neucodec_assets.tokens.roundtrip import decoder_for
    from resources.bucket import LocalBucket
    from resources.dagster_resources import EncoderResource
    from resources.sample_bucket import write_sample_bucket
    from resources.shard_reader import read_shard

    with tempfile.TemporaryDirectory(prefix="roundtrip-bench-") as tmp:
        bucket = LocalBucket(Path(tmp) / "bucket")
        report = write_sample_bucket(bucket, shards=1, languages=["en"], seed=3, segments_per_shard=args.segments)
        prefix = report.shards[0].prefix
        loaded = EncoderResource().load()
        decoder = decoder_for(loaded)  # once per run, before the shards: not part of a shard's cost
        print(f"model {loaded.model_label} on {loaded.device}; encoder load {loaded.load_seconds:.1f} s, "
              f"decoder load {decoder.load_seconds:.1f} s (once per run)")
        with read_shard(bucket, prefix) as reader:
            result = encode_shard(reader, bucket, loaded, Path(tmp) / "work", lambda line: None)
        meta = result.figures.to_metadata()
        encode_s = result.figures.encode_wall_seconds
        audio_s = result.figures.total_audio_seconds
        rt_s = metadata_value(meta, "roundtrip_seconds")
        sampled_s = sum(len(w) for w in reader_waves(bucket, prefix, meta)) / 16_000
        ratio = rt_s / encode_s
        print(f"bench shard: {result.figures.segment_count} segments, {audio_s:.1f} s of audio, encode {encode_s:.2f} s "
              f"({audio_s / encode_s:.2f}x real time)")
        print(f"round trip of {metadata_value(meta, 'roundtrip_segments')} segments ({sampled_s:.1f} s of audio): "
              f"{rt_s:.2f} s")
        print(f"ratio on this shard: round trip / encode = {100 * ratio:.2f}%")
        # extrapolation: costs per audio second, measured above
        enc_per_s = encode_s / audio_s
        rt_per_s = rt_s / sampled_s
        shard_s = args.shard_hours * 3600
        seg_s = shard_s / args.shard_segments
        est = args.samples * seg_s * rt_per_s / (shard_s * enc_per_s)
        k_max = int(0.02 * shard_s * enc_per_s / (seg_s * rt_per_s))
        print(f"round trip {rt_per_s:.3f} s per sampled audio second, encode {enc_per_s:.3f} s per audio second")
        print(f"realistic shard ({args.shard_hours:g} h, {args.shard_segments} segments of {seg_s:.1f} s): "
              f"{args.samples} samples cost {100 * est:.4f}% of its encode time; under 2% up to {k_max} samples")
        print(f"RATIO bench={ratio:.5f} realistic={est:.6f}")
    return 0


def reader_waves(bucket, prefix, meta):
    """The source WAVs the round trip wrote (their lengths are the sampled audio)."""
    import io

    import soundfile as sf

    from neucodec_assets.tokens.metadata import metadata_value

    table = metadata_value(meta, "roundtrip_pairs")
    for row in table.records:
        wave, _ = sf.read(io.BytesIO(bucket.read_bytes(row.data["source_key"])), dtype="float32")
        yield wave


if __name__ == "__main__":
    sys.exit(main())
