"""`make demo`: the whole pipeline on the embedded defaults, start to finish, the way a user runs it.

sample shards into a local folder bucket -> discover them as partitions -> one backfill of every asset over them
(as the UI launches it), executed by Dagster's daemon code with the repository's run queue and GPU run launcher ->
a summary table read back from the Dagster instance. Everything lives under `.demo/` (bucket folder, DAGSTER_HOME
with SQLite storage, run worker logs, and `dagster-events.log`: the runs' event log and everything else Dagster
and the libraries print, which the terminal shows only with -v) and is rebuilt on every call.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import yaml

from gpu_executor.launch.dagster_internals import BulkActionStatus, ModuleTarget, WorkspaceProcessContext
from gpu_executor.settings import environment_set
from neucodec_assets.cli.backfills import DaemonLoop, submit_backfill
from neucodec_assets.cli.console import console
from neucodec_assets.progress.summary import read_progress_summary
from neucodec_assets.tokens.discovery import add_shard_partitions, plan_discovery
from neucodec_assets.tokens.metadata import TOKENS_ASSET_KEY, metadata_value
from neucodec_assets.tokens.partitions import shards_partitions
from resources.bucket import LocalBucket
from resources.dagster_resources import (
    DEFAULT_MODEL,
    RANDOM_LABEL,
    RANDOM_MODEL,
    EncoderResource,
    unload_encoders,
)

MODEL_CHOICES = ("hub", "random")
OFFLINE_HINT = "make demo MODEL=random"
PRODUCTION_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
LOCATION = "neucodec_assets"
SFT_DATASET_KEY = dg.AssetKey("sft_dataset")
LOG_NAME = "dagster-events.log"
BACKFILL_TIMEOUT_S = 3600
#: The runs' event log entries, as records: into the demo's log file (and the terminal with -v).
EVENT_LOGGER = logging.getLogger("dagster.event_log")
logger = logging.getLogger(__name__)
#: What a materialization of a partition means, in the progress lines (other assets: written).
DONE_WORDS = {"neucodec_tokens": "encoded", "sft_pairs": "paired"}


class DemoError(RuntimeError):
    """The demo cannot go on; the message says what to do instead."""


@dataclass
class ShardRow:
    shard: str
    status: str
    segments: int
    failed: int | None
    hours: float
    tokens: int
    rtf: float | None


@dataclass
class DemoSummary:
    model: str
    bucket: str
    dagster_home: str
    log_file: str = ""
    rows: list[ShardRow] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    downstream: list[str] = field(default_factory=list)
    sft: str | None = None  # one line about the SFT dataset, when that asset exists
    roundtrip: str | None = None  # the decode round-trip figures and where to listen
    wall_seconds: float = 0.0

    @property
    def totals(self) -> ShardRow:
        encoded = [r for r in self.rows if r.rtf]
        enc_hours = sum(r.hours for r in encoded)
        enc_wall = sum(r.hours / r.rtf for r in encoded if r.rtf)
        return ShardRow(
            shard=f"total ({len(self.rows)} shards)", status="",
            segments=sum(r.segments for r in self.rows),
            failed=sum(r.failed or 0 for r in self.rows),
            hours=sum(r.hours for r in self.rows), tokens=sum(r.tokens for r in self.rows),
            rtf=enc_hours / enc_wall if enc_wall else None,
        )

    def table(self) -> str:
        header = ("shard", "status", "segments", "failed", "hours", "tokens", "real-time factor")
        lines = [header]
        for r in [*self.rows, self.totals]:
            lines.append((r.shard, r.status, str(r.segments), "?" if r.failed is None else str(r.failed),
                          f"{r.hours:.4f}", str(r.tokens), f"{r.rtf:.2f}x" if r.rtf else "-"))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        out = []
        for n, line in enumerate(lines):
            out.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
            if n == 0 or n == len(lines) - 2:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)


def _demo_instance_yaml(home: Path) -> str:
    """The repository's production dagster.yaml (queue, `gpu` pool, GPU run launcher, monitoring, retries) with
    the embedded SQLite storage instead of Postgres (its run, event log and schedule storages dropped)."""
    config = yaml.safe_load(PRODUCTION_YAML.read_text())
    for key in ("storage", "run_storage", "event_log_storage", "schedule_storage"):
        config.pop(key, None)
    config["run_launcher"].setdefault("config", {})["log_dir"] = str(home / "run_worker_logs")
    return "# the repository's dagster.yaml with the embedded default storage (SQLite in this folder)\n" + \
        yaml.safe_dump(config, sort_keys=False)


def _summary_rows(instance: dg.DagsterInstance, keys: Sequence[str]) -> list[ShardRow]:
    rows = []
    for key in keys:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, asset_partitions=[key]), limit=1
        ).records
        if not records:
            rows.append(ShardRow(key, "not materialized", 0, None, 0.0, 0, None))
            continue
        meta = records[0].asset_materialization.metadata  # type: ignore[union-attr]
        rows.append(ShardRow(
            shard=key, status=str(metadata_value(meta, "status")),
            segments=int(metadata_value(meta, "segment_count") or 0),
            failed=metadata_value(meta, "failed_count"),
            hours=float(metadata_value(meta, "total_audio_seconds") or 0) / 3600,
            tokens=int(metadata_value(meta, "total_tokens") or 0),
            rtf=metadata_value(meta, "real_time_factor"),
        ))
    return rows


def _roundtrip_line(instance: dg.DagsterInstance, keys: Sequence[str], bucket_url: str) -> str | None:
    """The round-trip means over all shards as `encoding_progress` summarized them (it ran after the tokens in the
    demo's backfill), and the folder of the first shard's WAV pairs."""
    summary = read_progress_summary(instance)
    total = summary.total if summary is not None else None
    if total is None or not total.roundtrip_sampled:
        return None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=TOKENS_ASSET_KEY, asset_partitions=list(keys)), limit=1).records
    prefix = metadata_value(records[0].asset_materialization.metadata, "roundtrip_wav_prefix") if records else None
    figures = ", ".join(f"{name} {value:.3f}" for name, value in total.roundtrip_means.items())
    label = " (random weights: the figures are meaningless)" if total.roundtrip_random else ""
    return (f"decode round trip of {total.roundtrip_sampled} sampled segments{label}: {figures}; "
            f"listen: {bucket_url}/{prefix}")


def _sft_line(instance: dg.DagsterInstance) -> str | None:
    event = instance.get_latest_materialization_event(SFT_DATASET_KEY)
    if event is None or event.asset_materialization is None:
        return None
    meta = event.asset_materialization.metadata
    return (f"SFT dataset: {metadata_value(meta, 'segments')} records ({metadata_value(meta, 'train_segments')} "
            f"train, {metadata_value(meta, 'validation_segments')} validation), {metadata_value(meta, 'hours')} h, "
            f"{metadata_value(meta, 'speech_tokens')} speech tokens; card: {metadata_value(meta, 'card_url')}")


def run_demo(model: str = "hub", *, shards: int = 3, segments: int = 6, root: Path = Path(".demo"),
             verbose: bool = False) -> DemoSummary:
    """Run the whole demo, printing only its progress (the rest goes to the log file it names, or with ``verbose``
    to the terminal as well); raises DemoError with the way out when it cannot go on."""
    if model not in MODEL_CHOICES:
        raise DemoError(f"--model {model!r}: choose one of {', '.join(MODEL_CHOICES)}")
    start = time.perf_counter()
    root = _fresh_folder(root)
    home, bucket_dir, log_file = root / "dagster_home", root / "bucket", root / LOG_NAME
    home.mkdir()
    with console(verbose, log_file) as say:
        say(f"log: {log_file} (Dagster's event log and the libraries' output"
            f"{'' if verbose else '; -v prints them here'})")
        settings, label = _check_model(model, say)
        bucket_url = _write_bucket(bucket_dir, shards, segments, say)
        summary = DemoSummary(model=label, bucket=bucket_url, dagster_home=str(home), log_file=str(log_file))
        _backfill_everything(summary, settings, home, bucket_dir, say)
    summary.wall_seconds = time.perf_counter() - start
    return summary


def _fresh_folder(root: Path) -> Path:
    """An empty demo folder: the SQLite instance and the bucket must hold this run's work and nothing older."""
    root = root.resolve()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return root


def _check_model(model: str, say: Callable[[str], None]):
    """Load the encoder once, here: a model that cannot be had stops the demo before any work, naming the way
    out, rather than failing every run."""
    from gpu_executor.encoder import ModelLoadError

    encoder = EncoderResource(model=RANDOM_MODEL) if model == "random" else EncoderResource()
    settings = encoder.settings()
    label = RANDOM_LABEL if settings.is_random else settings.model
    say(f"model: {label}")
    say("loading the encoder (to find out now whether the weights can be had)")
    try:
        loaded = encoder.load()
    except ModelLoadError as exc:
        if settings.model == DEFAULT_MODEL or not Path(settings.model).exists():
            raise DemoError(
                f"cannot load the neucodec model {settings.model!r} from the Hugging Face hub: {exc}\n"
                f"Without hub access, run the demo on a randomly initialized model of the same architecture: "
                f"`{OFFLINE_HINT}` (or `neucodec-platform demo --model random`)."
            ) from exc
        raise DemoError(f"cannot load the neucodec model {settings.model!r}: {exc}") from exc
    say(f"encoder ready on {loaded.device} in {loaded.load_seconds:.1f} s; each run's worker loads its own")
    unload_encoders()
    return settings, label


def _write_bucket(bucket_dir: Path, shards: int, segments: int, say: Callable[[str], None]) -> str:
    """Sample shards of synthesized speech in a local folder: the input a user's bucket holds."""
    from resources.sample_bucket import write_sample_bucket

    say(f"writing {shards} sample shards ({segments} segments each) to {bucket_dir}")
    bucket_url = bucket_dir.as_uri()
    write_sample_bucket(bucket_url, shards=shards, segments_per_shard=segments, seed=0)
    return bucket_url


def _backfill_everything(summary: DemoSummary, settings, home: Path, bucket_dir: Path,
                         say: Callable[[str], None]) -> None:
    """Discover, backfill every asset and read the results back, inside the deployment's environment (the code
    server and the run workers read their settings from it)."""
    bucket_url = summary.bucket
    (home / "dagster.yaml").write_text(_demo_instance_yaml(home))
    env = {"NEUCODEC_BUCKET": bucket_url, "NEUCODEC_AUTOMATION": "off", "DAGSTER_HOME": str(home)}
    if settings.is_random:
        env["NEUCODEC_MODEL"] = RANDOM_MODEL
    with environment_set(env), _workspace(home) as (instance, ctx):
        keys = _discover(instance, bucket_dir, say)
        backfill_id = _submit(instance, keys, summary, say)
        summary.runs = _wait_for(ctx, backfill_id, keys, say, home, Path(summary.log_file))
        summary.sft = _sft_line(instance)
        summary.rows = _summary_rows(instance, keys)
        summary.roundtrip = _roundtrip_line(instance, keys, bucket_url)


@contextmanager
def _workspace(home: Path) -> Iterator[tuple[dg.DagsterInstance, WorkspaceProcessContext]]:
    """The instance and the code location as the daemon sees them; a code location that fails to load stops the
    demo with its error, not a backfill that can never run."""
    with dg.DagsterInstance.from_config(str(home)) as instance, \
            WorkspaceProcessContext(instance, ModuleTarget(module_name="neucodec_assets.definitions", attribute=None,
                                                           working_directory=None, location_name=LOCATION)) as ctx:
        error = ctx.create_request_context().get_code_location_error(LOCATION)
        if error is not None:
            raise DemoError(f"the code location {LOCATION} failed to load:\n{error.to_string()}")
        yield instance, ctx


def _discover(instance: dg.DagsterInstance, bucket_dir: Path, say: Callable[[str], None]) -> list[str]:
    """What the discovery sensor does on a tick: the bucket's shards become partitions."""
    plan = plan_discovery(LocalBucket(bucket_dir), instance.get_dynamic_partitions(shards_partitions.name))
    added = add_shard_partitions(instance, plan.new_keys)
    say(f"discovered {len(plan.listed)} shards, added {len(added)} partitions")
    return [k for k in instance.get_dynamic_partitions(shards_partitions.name)
            if k in {s.prefix for s in plan.listed}]


def _submit(instance: dg.DagsterInstance, keys: Sequence[str], summary: DemoSummary,
            say: Callable[[str], None]) -> str:
    """What a user does in the UI: one backfill of every asset over the new shards; the backfill policies group the
    shards into runs, the queue holds them for the `gpu` pool, the launcher starts each run's worker."""
    from neucodec_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    assets = [k for k in graph.toposorted_asset_keys if k in graph.materializable_asset_keys]
    summary.downstream = [k.to_user_string() for k in assets if k != TOKENS_ASSET_KEY]
    backfill_id = submit_backfill(instance, graph, assets, keys, title="neucodec-platform demo")
    say(f"backfill {backfill_id}: {', '.join(k.to_user_string() for k in assets)} over {len(keys)} shards")
    return backfill_id


def _wait_for(ctx: WorkspaceProcessContext, backfill_id: str, keys: Sequence[str], say: Callable[[str], None],
              home: Path, log_file: Path) -> list[str]:
    """Dagster's daemon iterations, ticked in this process until the backfill ends (the demo has no daemon); a
    progress line per step of the runs, every event into the log; raises DemoError naming what failed."""
    instance = ctx.instance
    steps = _StepProgress(say, len(keys))
    status = DaemonLoop(ctx).until_done(backfill_id, timeout=BACKFILL_TIMEOUT_S, progress=logger.info, events=steps)
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    if status != BulkActionStatus.COMPLETED_SUCCESS:
        failed = [r.run_id for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
        raise DemoError("\n".join([
            f"backfill {backfill_id} ended {status.value}; failed runs {failed}", *steps.failures,
            f"the event log: {log_file}; the run workers' output: {home / 'run_worker_logs'}",
            f"browse it with `DAGSTER_HOME={home} dagster dev -w workspace.yaml`"]))
    say(f"backfill {backfill_id}: {len(runs)} runs succeeded")
    return [r.run_id for r in runs]


class _StepProgress:
    """The runs' event log as the demo's progress: a line when a step starts and when an asset is materialized, the
    errors of failed steps and runs; every entry goes to the `dagster.event_log` logger (the log file)."""

    def __init__(self, say: Callable[[str], None], shards: int):
        self.say, self.shards = say, shards
        self.started: set[str] = set()
        self.done: dict[str, set[str]] = {}
        self.failures: list[str] = []
        self.failed_runs: set[str] = set()

    def __call__(self, entry: dg.EventLogEntry) -> None:
        _log_event(entry)
        event = entry.dagster_event
        if event is None:
            return
        run = entry.run_id[:8]
        if event.event_type == dg.DagsterEventType.STEP_START and entry.step_key not in self.started:
            self.started.add(entry.step_key or "")
            self.say(f"  {entry.step_key}: started (run {run})")
        elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION and event.asset_key is not None:
            asset = event.asset_key.to_user_string()
            done = self.done.setdefault(asset, set())
            done.add(event.partition or "")
            if event.partition is None:
                self.say(f"  {asset}: written")
            else:
                self.say(f"  {asset}: {len(done)}/{self.shards} shards {DONE_WORDS.get(asset, 'written')}")
        elif event.event_type == dg.DagsterEventType.STEP_FAILURE:
            self.failed_runs.add(entry.run_id)
            self._failed(f"  FAILED {entry.step_key} (run {run}): {_user_error(event.step_failure_data.error)}")
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and entry.run_id not in self.failed_runs:
            self._failed(f"  FAILED run {run}: {entry.message}")  # no step failed: the worker died, hung, ...

    def _failed(self, line: str) -> None:
        self.failures.append(line)
        self.say(line)


def _user_error(error) -> str:
    """The innermost error of a step failure (the user code's, not Dagster's wrapper), without the class path of
    Dagster's `Failure`, whose description is the message."""
    while error.cause is not None:
        error = error.cause
    message = error.message.strip()
    if error.cls_name == dg.Failure.__name__:  # "<module path>.Failure: <description>"
        return message.partition(": ")[2] or message
    return message


def _log_event(entry: dg.EventLogEntry) -> None:
    """One event log entry as a log record with the event's own time and level, like Dagster's console logger."""
    event_type = entry.dagster_event_type.name if entry.dagster_event_type else "LOG"
    message = f"{entry.job_name or '-'} - {entry.run_id} - {entry.step_key or '-'} - {event_type} - {entry.message}"
    record = EVENT_LOGGER.makeRecord(EVENT_LOGGER.name, entry.level if isinstance(entry.level, int) else
                                     logging.getLevelName(str(entry.level)), "(event log)", 0, message, None, None)
    record.created, record.msecs = entry.timestamp, (entry.timestamp % 1) * 1000
    record.terminal = False  # its failures reach the terminal as the demo's own lines, not once more as records
    if EVENT_LOGGER.isEnabledFor(record.levelno):
        EVENT_LOGGER.handle(record)
