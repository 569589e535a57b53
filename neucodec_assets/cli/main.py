"""The ``neucodec-platform`` command line: the few things Dagster's own CLI cannot do."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

from neucodec_assets.cli.console import console

VERBOSE_HELP = "also print Dagster's and the libraries' logs and warnings (debug level)"
logger = logging.getLogger("neucodec_assets.cli")  # also when run as `python -m neucodec_assets.cli`


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


def _instance():
    """The Dagster instance of DAGSTER_HOME (its dagster.yaml picks Postgres or the SQLite default)."""
    import dagster as dg

    from gpu_executor.settings import load_settings

    home = load_settings().dagster_home
    if not home:
        raise CliError("DAGSTER_HOME is not set: point it at the Dagster instance folder (its dagster.yaml "
                       "chooses Postgres; an empty folder means SQLite storage in it)")
    if not Path(home).is_dir():
        raise CliError(f"DAGSTER_HOME={home} is not a folder")
    instance = dg.DagsterInstance.get()
    # Not the run launcher: building it would need the launcher's own settings (a Celery broker, a kube config).
    logger.debug("Dagster instance of DAGSTER_HOME=%s: %s", home, type(instance.run_storage).__name__)
    return instance


class CliError(RuntimeError):
    """A problem the user can fix; printed without a traceback."""


def _cmd_discover(args: argparse.Namespace) -> int:
    from neucodec_assets.cli.adoption import adopt_existing
    from neucodec_assets.tokens.discovery import add_shard_partitions, plan_discovery
    from neucodec_assets.tokens.partitions import shards_partitions
    from resources.bucket import open_bucket

    bucket = open_bucket(args.bucket)
    with _instance() as instance:
        plan = plan_discovery(bucket, instance.get_dynamic_partitions(shards_partitions.name), args.prefix)
        added = add_shard_partitions(instance, plan.new_keys)
        with_tokens = sum(1 for s in plan.listed if s.has_tokens)
        print(f"{bucket.url}: {len(plan.listed)} shards ({with_tokens} with a tokens file); "
              f"added {len(added)} partitions to '{shards_partitions.name}'")
        if args.adopt:
            report = adopt_existing(instance, bucket, plan.listed, force=args.force, log=print)
            print(f"adopted {len(report.adopted)} shards; {len(report.already_materialized)} already materialized; "
                  f"{len(report.invalid)} tokens files did not validate")
            for prefix, reason in report.invalid:
                print(f"  not adopted {prefix}: {reason}")
    return 0


def _cmd_import_legacy(args: argparse.Namespace) -> int:
    from gpu_executor.settings import load_settings
    from neucodec_assets.cli.legacy_import import import_legacy, redact_dsn
    from resources.bucket import open_bucket

    dsn = args.dsn or load_settings().secret("legacy_dsn")
    if not dsn:
        raise CliError("give the legacy database as --dsn postgresql://USER:PASSWORD@HOST:PORT/DB "
                       "or in NEUCODEC_LEGACY_DSN")
    bucket = open_bucket(args.bucket)
    with _instance() as instance:
        report = import_legacy(instance, dsn, table=args.table, completed_status=args.status, force=args.force,
                               bucket=bucket)
    print(f"{redact_dsn(dsn)} {args.table}: {report.rows} rows, {report.completed} '{args.status}'; "
          f"added {len(report.partitions_added)} partitions, recorded {len(report.recorded)} materializations, "
          f"{len(report.already_materialized)} already materialized, {len(report.missing)} without their tokens "
          f"file in {bucket.url}")
    for prefix, key, reason in report.missing:
        print(f"  not recorded {prefix}: {key} {reason}")
    return 0


def _cmd_enqueue(args: argparse.Namespace) -> int:
    """A backfill of `neucodec_tokens` (and, with --sft, the SFT assets after it) through the instance: the same
    thing the UI's backfill dialog records; the daemon runs it on the fleet's slots."""
    import dagster as dg

    from neucodec_assets.cli.backfills import submit_backfill
    from neucodec_assets.definitions import defs
    from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY
    from neucodec_assets.tokens.partitions import shards_partitions

    with _instance() as instance:
        known = instance.get_dynamic_partitions(shards_partitions.name)
        if not args.keys and not args.missing:
            raise CliError("name the shards to queue (partition keys), or --missing for every shard not yet encoded")
        if args.missing:
            done = instance.get_materialized_partitions(TOKENS_ASSET_KEY)
            keys = [k for k in known if k not in done]
        else:
            unknown = sorted(set(args.keys) - set(known))
            if unknown:
                raise CliError(f"not partitions of '{shards_partitions.name}' (run `neucodec-platform discover` "
                               f"first): {', '.join(unknown[:5])}")
            keys = [k for k in known if k in set(args.keys)]
        if not keys:
            print("nothing to enqueue")
            return 0
        assets = [TOKENS_ASSET_KEY]
        if args.sft:
            assets += [dg.AssetKey("sft_pairs"), dg.AssetKey("sft_dataset")]
        backfill_id = submit_backfill(instance, defs.resolve_asset_graph(), assets, keys,
                                      title=f"neucodec-platform enqueue ({len(keys)} shards)")
    print(f"backfill {backfill_id}: {len(keys)} shards queued for {', '.join(a.to_user_string() for a in assets)}; "
          "the daemon (`dagster-daemon run`) launches its runs")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    """Progress, rate, ETA and cost: computed now from the instance (and the bucket for remaining hours) the way
    encoding_progress computes it, starting from its cache and writing nothing; with --recorded, the summary
    encoding_progress last recorded (the one the UI and the SFT card show)."""
    import json

    from neucodec_assets.progress import progress_prefix
    from neucodec_assets.progress.refresh import refresh
    from neucodec_assets.progress.render import format_text
    from neucodec_assets.progress.summary import UnsupportedSummary, read_progress_summary
    from resources.bucket import open_bucket

    bucket = None if args.no_bucket else open_bucket(args.bucket)
    with _instance() as instance:
        if args.recorded:
            try:
                summary = read_progress_summary(instance, bucket)
            except UnsupportedSummary as exc:
                raise CliError(str(exc)) from exc
            if summary is None:
                raise CliError("encoding_progress has recorded no summary yet: materialize it (its schedule does "
                               "every 10 minutes), or run `status` without --recorded to compute one now")
        else:
            summary = refresh(instance, bucket, progress_prefix(), save=False, max_reads=args.max_reads)
        fleet = _fleet_section(instance, summary) if args.json else None
    data = summary.to_json()
    if fleet is not None:
        data["fleet"] = fleet
    print(json.dumps(data, indent=1) if args.json else format_text(summary))
    return 0


def _fleet_section(instance, summary) -> dict | None:
    """`status --json`'s `fleet` object where the fleet's Redis is configured (a broker or beats URL), else None."""
    from gpu_executor.launch.worker_beats import beats_url
    from neucodec_assets.fleet.view import FleetUnavailable, read_view

    if beats_url() is None:
        return None
    try:
        return read_view(instance, summary=summary).to_json()
    except FleetUnavailable as exc:
        return {"unavailable": str(exc)}


def _cmd_fleet(args: argparse.Namespace) -> int:
    """The fleet view (heartbeats, queue, ETA, what-ifs), or one of up / down / drain."""
    import json

    from gpu_executor.settings import load_settings
    from neucodec_assets.fleet import skypilot
    from neucodec_assets.fleet.view import FleetUnavailable, read_view

    settings = load_settings()
    action = getattr(args, "fleet_command", None)
    try:
        if action == "up":
            launches = skypilot.launch_boxes(settings, args.count, code_version=settings.code_version)
            for launch in launches:
                print(f"{launch.cluster}: requested ({launch.request_id}; follow it with `sky api logs "
                      f"{launch.request_id}`)")
            print(f"{len(launches)} boxes asked for; each releases itself when its worker has been idle for "
                  f"{settings.fleet_idle}; `neucodec-platform fleet` shows them as they join")
            return 0
        if action == "down":
            if not args.clusters and not args.all:
                raise CliError("name the clusters to tear down, or --all for every cluster of the fleet")
            done = skypilot.tear_down(settings, None if args.all else args.clusters)
            print(f"torn down {len(done)} clusters: {', '.join(done) or '-'}")
            return 0
    except skypilot.FleetError as exc:
        raise CliError(str(exc)) from exc
    if action == "drain":
        from gpu_executor.launch.box_drain import request_drain
        from gpu_executor.launch.worker_beats import NO_STORE, beats_url, redis_client

        url = beats_url()
        if url is None:
            raise CliError(NO_STORE)
        request_drain(redis_client(url), args.box)
        print(f"drain requested for box {args.box}: its workers finish their runs, take no more, and exit")
        return 0
    from gpu_executor.launch.worker_beats import beats_url

    if beats_url() is None:  # before opening the instance: nothing to show without heartbeats
        raise CliError("no worker heartbeats to read: set NEUCODEC_CELERY_BROKER to the fleet's Redis broker (or "
                       "NEUCODEC_WORKER_BEATS_URL to a Redis, with a RabbitMQ broker)")
    with _instance() as instance:
        try:
            view = read_view(instance, box_prefix=args.boxes)
        except FleetUnavailable as exc:
            raise CliError(str(exc)) from exc
        if args.clusters:
            try:
                view = dataclasses.replace(view, clusters=[c.to_json() for c in skypilot.list_fleet(settings)])
            except skypilot.FleetError as exc:
                raise CliError(str(exc)) from exc
    if args.json:
        print(json.dumps(view.to_json(), indent=1))
    else:
        from neucodec_assets.cli.fleet import format_fleet

        print(format_fleet(view))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The demo opens its own `console`, with its log file in the folder it resets first."""
    from neucodec_assets.cli.demo import DemoError, run_demo

    try:
        summary = run_demo(args.model, shards=args.shards, segments=args.segments, root=Path(args.dir),
                           verbose=args.verbose)
    except DemoError as exc:
        raise CliError(str(exc)) from exc
    print()
    print(f"model: {summary.model}")
    print(f"bucket: {summary.bucket}   DAGSTER_HOME: {summary.dagster_home}   runs: {len(summary.runs)}")
    if summary.downstream:
        print(f"downstream assets materialized: {', '.join(summary.downstream)}")
    print(summary.table())
    if summary.sft:
        print(summary.sft)
    if summary.roundtrip:
        print(summary.roundtrip)
    print(f"progress: DAGSTER_HOME={summary.dagster_home} neucodec-platform status")
    print(f"Dagster's event log and the libraries' output: {summary.log_file}"
          f"{'' if args.verbose else ' (-v prints them here)'}")
    print(f"demo finished in {summary.wall_seconds:.1f} s; browse it with "
          f"`DAGSTER_HOME={summary.dagster_home} dagster dev -w workspace.yaml`")
    return 0


def _cmd_compare_precision(args: argparse.Namespace) -> int:
    """fp32 against a faster precision on a seeded sample of one shard: token agreement and decoded quality."""
    import dataclasses
    import json

    from neucodec_assets.cli.precision_compare import compare_precision
    from resources.bucket import open_bucket
    from resources.dagster_resources import EncoderResource

    settings = EncoderResource().settings()
    if args.model:
        settings = dataclasses.replace(settings, model=args.model)
    if args.device:
        settings = dataclasses.replace(settings, device=args.device)
    try:
        result = compare_precision(open_bucket(args.bucket), args.partition, samples=args.samples,
                                   precision=args.precision, settings=settings,
                                   log=lambda line: print(line, file=sys.stderr))
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    print(json.dumps(result.to_json(), indent=1) if args.json else result.text())
    return 0


def _cmd_settings(args: argparse.Namespace) -> int:
    from gpu_executor.settings import load_settings, markdown_table

    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    for variable, value in load_settings().in_effect().items():
        print(f"{variable}={value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neucodec-platform",
        description="Encode sharded speech audio into neucodec tokens with Dagster.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    # `-v` after the subcommand too; SUPPRESS keeps a subcommand without it from resetting the one before it.
    verbosity = argparse.ArgumentParser(add_help=False)
    verbosity.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "sample-bucket", parents=[verbosity],
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

    p = sub.add_parser(
        "discover", parents=[verbosity],
        help="add every shard of NEUCODEC_BUCKET as a partition of the instance in DAGSTER_HOME",
    )
    p.add_argument("--bucket", default=None, help="bucket URL (default: NEUCODEC_BUCKET)")
    p.add_argument("--prefix", default="", help="only shards under this key prefix")
    p.add_argument("--adopt", action="store_true",
                   help="also record shards whose tokens file exists and validates as materialized (no encoding)")
    p.add_argument("--force", action="store_true", help="with --adopt: record even already materialized shards")
    p.set_defaults(func=_cmd_discover)

    p = sub.add_parser(
        "enqueue", parents=[verbosity],
        help="queue shards through the fleet: a backfill of neucodec_tokens that the daemon runs on free GPUs",
    )
    p.add_argument("keys", nargs="*", help="partition keys (shard prefixes)")
    p.add_argument("--missing", action="store_true", help="every shard whose tokens are not materialized")
    p.add_argument("--sft", action="store_true", help="also build sft_pairs and sft_dataset after the tokens")
    p.set_defaults(func=_cmd_enqueue)

    p = sub.add_parser(
        "import-legacy", parents=[verbosity],
        help="record the completed rows of the old fleet's neucodec_shards table as materialized partitions",
    )
    p.add_argument("--dsn", default=None,
                   help="legacy Postgres URL (default: NEUCODEC_LEGACY_DSN; prefer the variable for passwords)")
    p.add_argument("--table", default="neucodec_shards", help="table name (default neucodec_shards)")
    p.add_argument("--status", default="completed", help="status of finished rows (default completed)")
    p.add_argument("--bucket", default=None,
                   help="bucket URL where the rows' tokens files must exist (default: NEUCODEC_BUCKET)")
    p.add_argument("--force", action="store_true", help="record rows even where the partition is materialized")
    p.set_defaults(func=_cmd_import_legacy)

    p = sub.add_parser(
        "status", parents=[verbosity],
        help="shards done/failed/in flight/pending, hours, throughput, ETA and GPU cost per language and dataset",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--bucket", default=None, help="bucket URL for remaining hours (default: NEUCODEC_BUCKET)")
    p.add_argument("--no-bucket", action="store_true", help="do not read the bucket (remaining hours unknown)")
    p.add_argument("--max-reads", type=int, default=None,
                   help="metadata.parquet files to read at most (default: NEUCODEC_PROGRESS_METADATA_READS, 2000)")
    p.add_argument("--recorded", action="store_true",
                   help="print the summary encoding_progress last recorded instead of computing one now")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "fleet", parents=[verbosity],
        help="the rented GPU fleet: boxes, GPUs and their runs from the heartbeats, runs waiting, ETA and what-ifs; "
        "`fleet up N` / `fleet down` / `fleet drain BOX`",
    )
    p.add_argument("--json", action="store_true", help="print the view as JSON")
    p.add_argument("--boxes", default="", metavar="PREFIX", help="only boxes whose name starts with PREFIX")
    p.add_argument("--clusters", action="store_true", help="also list the fleet's SkyPilot clusters and their state")
    p.set_defaults(func=_cmd_fleet)
    fleet_sub = p.add_subparsers(dest="fleet_command")
    q = fleet_sub.add_parser("up", help="rent N GPU boxes through SkyPilot (deploy/skypilot/gpu-worker.yaml)")
    q.add_argument("count", type=int, help="how many boxes")
    q = fleet_sub.add_parser("down", help="tear down the fleet's SkyPilot clusters (runs on them are retried)")
    q.add_argument("clusters", nargs="*", help="cluster names (`fleet --clusters` lists them)")
    q.add_argument("--all", action="store_true", help="every cluster of the fleet (NEUCODEC_FLEET_CLUSTER_PREFIX)")
    q = fleet_sub.add_parser("drain", help="ask a box's workers to finish their runs, take no more, and exit")
    q.add_argument("box", help="the box name, as `fleet` shows it")

    p = sub.add_parser(
        "demo", parents=[verbosity],
        help="sample bucket -> discover -> encode every shard -> downstream assets -> summary (under .demo/)",
    )
    p.add_argument("--model", choices=("hub", "random"), default="hub",
                   help="hub: neuphonic/neucodec from the Hugging Face hub (or NEUCODEC_MODEL); "
                   "random: a randomly initialized model of the real architecture, offline")
    p.add_argument("--shards", type=int, default=3, help="sample shards (default 3)")
    p.add_argument("--segments", type=int, default=6, help="segments per shard (default 6)")
    p.add_argument("--dir", default=".demo", help="folder for the bucket and DAGSTER_HOME (default .demo)")
    p.set_defaults(func=_cmd_demo, console=False)

    from gpu_executor.launch.gpu_worker_cli import add_parser as add_gpu_worker_parser

    add_gpu_worker_parser(sub)  # rented GPU boxes: one Celery worker per GPU (deploy/README.md)
    sub.choices["gpu-worker"].set_defaults(console=False)  # a long-running worker: its log is its output

    p = sub.add_parser(
        "compare-precision", parents=[verbosity],
        help="encode a seeded sample of a shard in fp32 and a faster precision, decode both, print token agreement "
        "and STOI/PESQ/SI-SDR/log-mel side by side",
    )
    p.add_argument("--partition", required=True, help="the shard's partition key (its prefix in the bucket)")
    p.add_argument("--samples", type=int, default=4, help="segments in the seeded sample (default 4)")
    p.add_argument("--precision", choices=("bf16", "fp16", "tf32"), default="bf16",
                   help="the faster precision to compare with fp32 (default bf16; on a CPU only fp32 runs)")
    p.add_argument("--bucket", default=None, help="bucket URL (default: NEUCODEC_BUCKET)")
    p.add_argument("--model", default=None, help="model (default: NEUCODEC_MODEL; 'random' for the test model)")
    p.add_argument("--device", default=None, help="device (default: NEUCODEC_DEVICE)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=_cmd_compare_precision)

    p = sub.add_parser(
        "settings", parents=[verbosity],
        help="print every setting's value in effect here (secrets masked), or --markdown the README's table",
    )
    p.add_argument("--markdown", action="store_true", help="print the configuration table of the README")
    p.set_defaults(func=_cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gpu_executor.settings import SettingsError
    from neucodec_assets.cli.legacy_import import LegacyImportError
    from resources.bucket import BucketError

    try:
        if not getattr(args, "console", True):
            return args.func(args)
        with console(args.verbose):
            return args.func(args)
    except (CliError, BucketError, LegacyImportError, SettingsError) as exc:
        print(f"neucodec-platform {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
