"""The ``neucodec-platform`` command line: the few things Dagster's own CLI cannot do."""

from __future__ import annotations

import argparse
import sys


def _cmd_sample_bucket(args: argparse.Namespace) -> int:
    from resources.sample_bucket import write_sample_bucket

    report = write_sample_bucket(
        args.dest, shards=args.shards, languages=args.languages, seed=args.seed,
        segments_per_shard=args.segments,
    )
    for shard in report.shards:
        print(f"{shard.prefix}\t{shard.segment_count} segments\t{shard.audio_seconds:.1f} s")
    print(f"wrote {len(report.shards)} shards to {args.dest}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neucodec-platform",
        description="Encode sharded speech audio into neucodec tokens with Dagster.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "sample-bucket",
        help="write sample shards of synthesized speech (espeak-ng) into a folder or bucket",
    )
    p.add_argument("dest", help="a local folder, file:///ABS/PATH or s3://BUCKET[/PREFIX]")
    p.add_argument("--shards", type=int, default=3, help="number of shards (default 3)")
    p.add_argument(
        "--languages", nargs="+", default=None,
        help="language codes to draw from (default: all 12 of the corpus)",
    )
    p.add_argument("--segments", type=int, default=6, help="segments per shard (default 6)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same shards")
    p.set_defaults(func=_cmd_sample_bucket)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
