"""Every setting of the platform, in one place: name, type, default, accepted values and meaning.

The settings are environment variables (their names are part of the contract, DESIGN.md). ``load_settings()`` reads
them into one typed, validated ``Settings`` object; a bad value fails there, naming the variable and what it
accepts. Callers read it when a run, a sensor tick or a worker starts, never at import; only the few settings that
shape Dagster definitions (schedules, sensor intervals, the backfill policy) are read when the code location loads.

Why a pydantic model and not Dagster resources: the encoder engine, the run launchers, the Celery worker and the
CLI need the same settings outside Dagster's resource system (the engine has no Dagster import), and this module
sits in the lowest layer so that every layer can import it. Why not pydantic-settings' own environment source:
several settings have more than one name (``R2_*`` then ``AWS_*``), a blank value means unset for all but
``CUDA_VISIBLE_DEVICES``, and errors must name the variable; the reader below does exactly that in a few lines.

``python -m gpu_executor.settings`` prints the values in effect (secrets masked); ``--markdown`` prints the
README's configuration table, which a test keeps equal to this module.
"""

from __future__ import annotations

import os
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

GROUPS = {
    "bucket": "Bucket and shards",
    "encoder": "Encoder",
    "run": "Encoding runs",
    "automation": "Discovery and automation",
    "progress": "Progress, quality and alerts",
    "sft": "SFT dataset",
    "fleet": "GPU hosts, Celery and Kubernetes",
    "dagster": "Dagster and the system",
}
READ_AT = {
    "run": "run start",
    "location": "code location load",
    "worker": "worker start",
    "command": "command start",
    "instance": "instance load",
    "launcher": "set by the launcher",
    "tick": "command start or sensor tick",
}
MASK = "***"


def setting(default: Any, group: str, doc: str, *, env: str | tuple[str, ...] | None = None, read: str = "run",
            shown_default: str | None = None, keep_blank: bool = False, **constraints: Any) -> Any:
    """A field of ``Settings``: ``env`` names the variable(s), first set wins (default: ``NEUCODEC_<FIELD>``)."""
    assert group in GROUPS and read in READ_AT
    extra = {"group": group, "read": read, "keep_blank": keep_blank}
    if env is not None:
        extra["env"] = (env,) if isinstance(env, str) else env
    if shown_default is not None:
        extra["shown_default"] = shown_default
    return Field(default, description=doc, json_schema_extra=extra, **constraints)


class Settings(BaseModel):
    """The platform's settings; build it with ``load_settings()``. Fields are documented in the README table."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- bucket and shards -------------------------------------------------------------------------------------
    bucket: str | None = setting(
        None, "bucket", "where shards live: `s3://BUCKET[/PREFIX]`, `file:///ABS/PATH` or a path",
        shown_default="`./.data/bucket` (a local folder)")
    r2_endpoint_url: str | None = setting(
        None, "bucket", "S3-compatible endpoint (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` are read after it)",
        env=("R2_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), shown_default="unset (AWS S3)")
    r2_access_key_id: SecretStr | None = setting(
        None, "bucket", "R2 credentials, both or neither; never logged", env="R2_ACCESS_KEY_ID")
    r2_secret_access_key: SecretStr | None = setting(
        None, "bucket", "R2 credentials, both or neither; never logged", env="R2_SECRET_ACCESS_KEY")
    aws_access_key_id: SecretStr | None = setting(
        None, "bucket", "standard AWS credentials, used when the R2 ones are unset", env="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = setting(
        None, "bucket", "standard AWS credentials, used when the R2 ones are unset", env="AWS_SECRET_ACCESS_KEY")
    aws_profile: str | None = setting(None, "bucket", "an AWS profile instead of keys", env="AWS_PROFILE")
    aws_region: str | None = setting(
        None, "bucket", "region without a custom endpoint (`AWS_DEFAULT_REGION` is read after it)",
        env=("AWS_REGION", "AWS_DEFAULT_REGION"), shown_default="`us-east-1`; `auto` with an endpoint")
    shard_layout: str = setting(
        "{dataset}/{language}/{shard}", "bucket",
        "how dataset and language are read from a prefix when the metadata has none")
    spool_dir: str | None = setting(
        None, "bucket", "where an S3 shard's `audio.tar` is downloaded (needs about one shard of disk)",
        shown_default="system temp")
    download_part_mib: float = setting(
        64.0, "bucket", "size of the ranged parts (4 at a time) in which an object of two parts or more is "
        "downloaded", ge=0.0625)
    decode_workers: int | None = setting(
        None, "bucket", "audio decoding threads per shard (`bench/decode_bench.py` measures what a GPU needs)",
        shown_default="the cores this process may use minus one, 2 to 8", ge=1)

    # -- encoder -----------------------------------------------------------------------------------------------
    model: str = setting(
        "neuphonic/neucodec", "encoder", "neucodec weights: hub id, local folder in the hub layout, or `random`")
    semantic_model: str = setting(
        "facebook/w2v-bert-2.0", "encoder", "wav2vec2-bert: hub id or local transformers folder")
    device: str = setting("auto", "encoder", "`auto`, `cpu`, `cuda`, `cuda:N`", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    precision: Literal["fp32", "tf32", "bf16", "fp16"] = setting(
        "fp32", "encoder", "`fp32` (exact), `tf32` (CUDA tensor cores), `bf16`, `fp16` (refused on a CPU without "
        "native support)")
    batch_seconds: float | None = setting(
        None, "encoder", "padded audio seconds per batch",
        shown_default="20 on CPU; from the GPU's memory on CUDA", gt=0)
    max_clip_seconds: float | None = setting(
        None, "encoder", "whole-clip limit; longer clips are chunked", shown_default="`120`", gt=0)
    chunking: Literal["overlap", "seed"] | None = setting(
        None, "encoder", "`overlap` (cores with context on each side) or `seed` (the old fleet's hard 30 s splits)",
        shown_default="`overlap`")
    stream_buffer_seconds: float | None = setting(
        None, "encoder", "audio held per encode call while streaming a shard (also how often progress can be "
        "reported)", shown_default="max(4 x batch, 120)", gt=0)
    fused_activation: bool | None = setting(
        None, "encoder", "`1`/`0`: the acoustic encoder's activations as Triton kernels (CUDA only)",
        shown_default="on for `bf16`/`fp16` on CUDA, off otherwise")
    cache_dir: str | None = setting(
        None, "encoder", "where the random model and test audio are cached",
        shown_default="`~/.cache/neucodec-platform`")

    # -- encoding runs -----------------------------------------------------------------------------------------
    shards_per_run: Annotated[int, Field(ge=1)] | Literal["auto"] = setting(
        8, "run", "shards per backfill run (one model load per run); `auto`: from the `gpu` pool's slots and the "
        "shards without tokens when the code location loads, so each slot gets about "
        "`NEUCODEC_AUTOMATION_RUNS_PER_SLOT` runs (1 to 64 shards)", read="location")
    progress_seconds: float = setting(30.0, "run", "how often a run logs progress", gt=0)
    hang_seconds: float = setting(
        600.0, "run", "a run with no encoded segment for this long, or whose download had a part without a byte "
        "for this long, is failed (and retried)", ge=1)
    max_seconds_per_shard: float = setting(
        7200.0, "run", "per-shard budget of a run's `dagster/max_runtime` (plus a start-up allowance)", ge=1)
    roundtrip_samples: int = setting(
        4, "run", "segments per shard decoded back and compared with the source; `0` turns it off", ge=0)

    # -- discovery and automation ------------------------------------------------------------------------------
    discovery_interval_seconds: int = setting(
        300, "automation", "discovery sensor interval", read="location", ge=1)
    discovery_keys_per_tick: int = setting(50_000, "automation", "bucket objects one discovery tick lists at most",
                                           ge=1)
    discovery_list_seconds: float = setting(20.0, "automation", "listing time one discovery tick spends at most",
                                            ge=0.1)
    automation: bool = setting(
        True, "automation", "`off` starts the automation sensor stopped: nothing encodes until someone backfills",
        read="location", shown_default="`on`")
    automation_interval_seconds: int = setting(
        30, "automation", "how often the automation sensor evaluates", read="location", ge=5)
    automation_runs_per_slot: int = setting(
        4, "automation", "the automation sensor keeps at most this many tokens runs per `gpu` pool slot in flight "
        "(running or queued, its own and hand backfills'): a tick requests the rest of the bucket's missing shards "
        "only as they drain", read="location", ge=1)
    sft_dataset_cron: str = setting(
        "0 * * * *", "automation", "`sft_dataset` is rebuilt at most once per period of this cron, when pairs "
        "changed", read="location")

    # -- progress, quality and alerts --------------------------------------------------------------------------
    progress_cron: str = setting(
        "*/10 * * * *", "progress", "when `encoding_progress` is refreshed (also after each tokens backfill)",
        read="location")
    progress_prefix: str = setting("progress", "progress", "bucket prefix of the progress report, charts and cache")
    progress_metadata_reads: int = setting(
        2000, "progress", "`metadata.parquet` files read per progress pass for the remaining hours", ge=0)
    gpu_hour_price: float = setting(
        0.0, "progress", "price of one GPU-hour, for the running cost and cost per 1,000 hours",
        shown_default="`0` (cost not shown)", ge=0)
    alert_webhook_url: SecretStr | None = setting(
        None, "progress", "where `neucodec_alert_sensor` posts a JSON message per failed run, or one digest when "
        "many fail, retrying failed posts (the sensor starts on when it is set as the code location loads); never "
        "logged", shown_default="unset (no alerts)")
    ui_url: str | None = setting(
        None, "progress", "the Dagster UI's address, e.g. `https://dagster.example.com`: alerts link to the failed "
        "runs", shown_default="unset (alerts name the UI page instead)")
    legacy_dsn: SecretStr | None = setting(
        None, "progress", "the old fleet's Postgres for `import-legacy`; never logged", read="command")

    # -- SFT dataset -------------------------------------------------------------------------------------------
    sft_prefix: str = setting("sft", "sft", "bucket prefix of the SFT outputs")
    sft_tokenizer: str | None = setting(
        None, "sft", "tokenizer hub id or folder, e.g. `Scicom-intl/Multilingual-TTS-1.7B-Base`; speech tokens are "
        "added when missing; `none`: no `input_ids`", shown_default="unset (no `input_ids`)")
    sft_text_column: str | None = setting(
        None, "sft", "transcript column",
        shown_default="first of `text`, `transcript`, `transcription`, `sentence`, `normalized_text`")
    sft_min_cps: float = setting(1.0, "sft", "lower characters-per-second bound of the text-to-audio filter", ge=0)
    sft_max_cps: float = setting(40.0, "sft", "upper characters-per-second bound of the text-to-audio filter", gt=0)
    sft_validation_fraction: float = setting(
        0.01, "sft", "share of speakers (or segments) in validation", ge=0, lt=1)
    sft_pack: bool = setting(False, "sft", "also write packed training blocks (needs a tokenizer)",
                             shown_default="`0`")
    sft_block_size: int = setting(10240, "sft", "tokens per packed block", ge=16)

    # -- GPU hosts, Celery and Kubernetes ----------------------------------------------------------------------
    gpu_slot: str | None = setting(
        None, "fleet", "the GPU slot a run was given (`GPU index:share` or `cpuN`)", read="launcher")
    worker_host: str | None = setting(None, "fleet", "the host a run was launched on", read="launcher",
                                      shown_default="the host name")
    celery_broker: SecretStr | None = setting(
        None, "fleet", "the broker the GPU workers pull runs from, e.g. `redis://host:6379/0`; never logged",
        env=("NEUCODEC_CELERY_BROKER", "CELERY_BROKER_URL"), read="worker",
        shown_default="required by the Celery profile")
    celery_backend: SecretStr | None = setting(
        None, "fleet", "Celery result backend (must be readable by the daemon); never logged",
        env=("NEUCODEC_CELERY_BACKEND", "CELERY_RESULT_BACKEND"), read="worker",
        shown_default="the broker, when it is Redis")
    celery_queues: str = setting(
        "gpu,dagster", "fleet", "comma-separated queues a Celery worker consumes", read="worker")
    celery_gpu_queue: str = setting("gpu", "fleet", "the queue of `neucodec-platform gpu-worker`", read="worker")
    celery_heartbeat_seconds: float = setting(
        15.0, "fleet", "how often a GPU worker writes its run heartbeat (the launcher fails runs silent for "
        "`heartbeat_timeout_seconds`)", read="worker", gt=0)
    celery_cpu_queue: str | None = setting(
        None, "fleet", "queue of runs that need no GPU (progress, SFT, checks) on the Celery profile, used only "
        "while a live worker consumes it; otherwise they run on the control host (the launcher's `cpu_queue`)",
        read="instance", shown_default="the launcher's `default_queue` (`dagster`)")
    worker_beat_seconds: float = setting(
        10.0, "fleet", "how often each Celery worker publishes its heartbeat (state, run, code version) to Redis",
        read="worker", gt=0)
    worker_beats_url: SecretStr | None = setting(
        None, "fleet", "the Redis that holds worker heartbeats and drain requests; never logged",
        read="worker", shown_default="the broker, when it is Redis (with RabbitMQ: no heartbeats)")
    code_version: str | None = setting(
        None, "fleet", "the code version a process reports (e.g. the image tag), in heartbeats and run tags",
        read="worker", shown_default="package version + a hash of its sources")
    k8s_gpus: int = setting(1, "fleet", "GPU limit per Kubernetes encoding run", read="instance", ge=0)
    k8s_gpu_resource: str = setting("nvidia.com/gpu", "fleet", "the GPU's extended resource name",
                                    read="instance")
    k8s_node_selector: str | None = setting(
        None, "fleet", "node selector of encoding pods: `k=v,...` or a JSON object", read="instance")
    k8s_tolerations: str | None = setting(
        None, "fleet", "tolerations of encoding pods, a JSON list", read="instance",
        shown_default="tolerate the GPU resource's taint")
    k8s_cpu: str | None = setting(None, "fleet", "CPU request per Kubernetes encoding run", read="instance")
    k8s_memory: str | None = setting(None, "fleet", "memory request and limit per Kubernetes encoding run",
                                     read="instance")
    k8s_ephemeral_storage: str | None = setting(
        None, "fleet", "ephemeral-storage request and limit per Kubernetes encoding run", read="instance")
    k8s_spool_size: str | None = setting(
        None, "fleet", "size of the spool volume (an emptyDir) mounted at the spool folder", read="instance")
    compute_log_bucket: str | None = setting(
        None, "fleet", "bucket of the run workers' stdout/stderr on Kubernetes", read="instance",
        shown_default="required by `deploy/k8s/dagster.yaml`")
    fleet_task: str | None = setting(
        None, "fleet", "the SkyPilot task of one GPU box that `fleet up` and `fleet_sizing` launch",
        read="tick", shown_default="the repository's `deploy/skypilot/gpu-worker.yaml`")
    fleet_image: str | None = setting(
        None, "fleet", "the box image, e.g. `docker:REGISTRY/neucodec-platform:TAG` (replaces the task's "
        "`image_id`)", read="tick", shown_default="the task's `image_id`")
    fleet_accelerators: str | None = setting(
        None, "fleet", "comma-separated acceptable GPUs, e.g. `RTX4090,RTX3090,A100` (replaces the task's)",
        read="tick", shown_default="the task's `accelerators`")
    fleet_spot: bool | None = setting(
        None, "fleet", "`1`/`0`: rent spot/interruptible boxes", read="tick",
        shown_default="the task's `use_spot`")
    fleet_gpus_per_box: int = setting(1, "fleet", "GPUs of each rented box (the task asks for this many)",
                                      read="tick", ge=1)
    fleet_idle: str = setting("10m", "fleet", "a box's worker exits after this long without a run "
                              "(`gpu-worker --exit-when-idle`), and SkyPilot releases the box", read="tick")
    fleet_cluster_prefix: str = setting(
        "neucodec-gpu", "fleet", "name prefix of the fleet's SkyPilot clusters (`fleet down` tears down these)",
        read="tick", pattern=r"^[a-z][a-z0-9-]{0,30}$")
    fleet_max_gpus: int | None = setting(
        None, "fleet", "cap on the fleet's GPUs for `fleet_sizing` (with it or a spend cap the sensor is "
        "defined)", read="location", shown_default="unset (no automatic sizing)", ge=0)
    fleet_max_spend_per_hour: float | None = setting(
        None, "fleet", "cap on the fleet's spend per hour for `fleet_sizing` (needs `NEUCODEC_GPU_HOUR_PRICE`)",
        read="location", shown_default="unset", ge=0)
    fleet_launches_per_tick: int = setting(2, "fleet", "boxes one `fleet_sizing` tick launches at most",
                                           read="tick", ge=1)
    fleet_box_start_seconds: float = setting(
        900.0, "fleet", "a launched box that has not sent a heartbeat within this long is no longer counted as "
        "starting", read="tick", gt=0)
    fleet_interval_seconds: int = setting(120, "fleet", "how often `fleet_sizing` evaluates", read="location",
                                          ge=10)

    # -- Dagster and the system --------------------------------------------------------------------------------
    dagster_home: str | None = setting(
        None, "dagster", "the instance; its `dagster.yaml` picks Postgres or the SQLite default",
        env="DAGSTER_HOME", read="command", shown_default="required by Dagster")
    dagster_pg_password: SecretStr | None = setting(
        None, "dagster", "Postgres storage of runs, events and schedules (with `DAGSTER_PG_HOST`, `_PORT`, "
        "`_USERNAME`, `_DB`)", env="DAGSTER_PG_PASSWORD", read="instance",
        shown_default="required by the production `dagster.yaml`")
    cuda_visible_devices: str | None = setting(
        None, "dagster", "the GPUs this process may use (`\"\"` or `-1`: none); the launcher sets it per run",
        env="CUDA_VISIBLE_DEVICES", read="worker", keep_blank=True, shown_default="all")
    nvidia_visible_devices: str | None = setting(
        None, "dagster", "the GPUs a container was given (reported when CUDA is unusable)",
        env="NVIDIA_VISIBLE_DEVICES", read="worker")
    hf_hub_offline: bool = setting(
        False, "dagster", "never contact the Hugging Face hub: models come from local folders or the cache",
        env="HF_HUB_OFFLINE", read="worker", shown_default="`0`")
    triton_interpret: bool = setting(
        False, "dagster", "run Triton kernels in the interpreter (tests of the fused activations on a CPU)",
        env="TRITON_INTERPRET", read="worker", shown_default="`0`")

    # -- reading -----------------------------------------------------------------------------------------------
    @classmethod
    def env_names(cls, name: str) -> tuple[str, ...]:
        extra = cls.model_fields[name].json_schema_extra or {}
        return tuple(extra.get("env", (f"NEUCODEC_{name.upper()}",)))  # type: ignore[union-attr]

    @classmethod
    def extra(cls, name: str, key: str, default: Any = None) -> Any:
        return (cls.model_fields[name].json_schema_extra or {}).get(key, default)  # type: ignore[union-attr]

    def secret(self, name: str) -> str | None:
        """The plain value of a secret setting, for the one call that needs it (never for logs)."""
        value = getattr(self, name)
        return value.get_secret_value() if isinstance(value, SecretStr) else value

    def as_env(self) -> dict[str, str]:
        """Variable -> value for the settings that have one (secrets left out), for code written against a
        mapping of variables (GPU detection, the Kubernetes run config)."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None or isinstance(value, SecretStr):
                continue
            out[self.env_names(name)[0]] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out

    def in_effect(self, groups: tuple[str, ...] | None = None) -> dict[str, str]:
        """Variable -> value as it acts (defaults included), secrets masked: for the UI, logs and `settings`."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            if groups is not None and self.extra(name, "group") not in groups:
                continue
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = MASK if value.get_secret_value() else ""
            elif value is None:
                shown = ""
            elif value == "":
                shown = '""'  # kept blank: a value (CUDA_VISIBLE_DEVICES="" means no GPU), not "unset"
            elif isinstance(value, bool):
                shown = "on" if value else "off"
            else:
                shown = str(value)
            out[self.env_names(name)[0]] = shown or "unset"
        return out


def default_of(name: str) -> Any:
    """A setting's default, for code that needs it without reading the environment."""
    return Settings.model_fields[name].default


def named_variable(name: str) -> str | None:
    """A variable that an instance config names (``{env: NAME}``), read like the settings: blank means unset."""
    value = os.environ.get(name, "").strip()
    return value or None


class SettingsError(ValueError):
    """A setting's value is not accepted; the message names the variable and what it accepts."""


def _accepts(name: str) -> str:
    """What a field accepts, in words, from its type and constraints."""
    field = Settings.model_fields[name]
    kind = field.annotation
    inner, metadata, words = kind, list(field.metadata), []
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        inner = args[0]
        # A number or a word (`NEUCODEC_SHARDS_PER_RUN=auto`): the number's bounds sit in its Annotated metadata.
        words = [f"`{w}`" for a in args[1:] if typing.get_origin(a) is Literal for w in typing.get_args(a)]
        if typing.get_origin(inner) is Annotated:
            inner, *extra = typing.get_args(inner)
            metadata += [m for e in extra for m in getattr(e, "metadata", [e])]
    bounds = []
    for meta in metadata:
        for attr, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{word} {getattr(meta, attr)}")
        if getattr(meta, "pattern", None):
            return field.description.split(";")[0] if field.description else "a value of the documented form"
    suffix = f" {' and '.join(bounds)}" if bounds else ""
    suffix += f" or {', '.join(words)}" if words else ""
    if typing.get_origin(inner) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(inner))
    if inner is bool:
        return "on/off (1/0, true/false, yes/no)"
    if inner is int:
        return f"a whole number{suffix}"
    if inner is float:
        return f"a number{suffix}"
    return "text"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """The settings from ``env`` (default: this process's environment), validated; ``SettingsError`` otherwise."""
    env = os.environ if env is None else env
    values: dict[str, str] = {}
    source: dict[str, tuple[str, str]] = {}
    for name in Settings.model_fields:
        for var in Settings.env_names(name):
            raw = env.get(var)
            if raw is None or (not raw.strip() and not Settings.extra(name, "keep_blank")):
                continue
            values[name] = raw.strip() if not Settings.extra(name, "keep_blank") else raw
            source[name] = (var, raw)
            break
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        messages: dict[str, list[str]] = {}  # one problem per variable (a union type gives one error per member)
        for err in exc.errors():
            messages.setdefault(str(err["loc"][0]) if err["loc"] else "?", []).append(err["msg"])
        problems = []
        for name, msgs in messages.items():
            var, raw = source.get(name, (name, ""))
            shown = MASK if Settings.model_fields[name].annotation in (SecretStr, SecretStr | None) else repr(raw)
            problems.append(f"{var}={shown} is not accepted: it takes {_accepts(name)} ({'; '.join(msgs)})")
        raise SettingsError("; ".join(problems)) from None


@contextmanager
def environment_set(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block (for the processes started in it) and restore them after."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def markdown_table() -> str:
    """The README's configuration table, generated from the fields (a test keeps the README equal to it)."""
    lines = []
    for group, title in GROUPS.items():
        lines += ["", f"**{title}**", "", "| variable | default | read at | what it does |", "|---|---|---|---|"]
        for name, field in Settings.model_fields.items():
            if Settings.extra(name, "group") != group:
                continue
            names = Settings.env_names(name)
            variable = f"`{names[0]}`" + (f" (or {', '.join(f'`{n}`' for n in names[1:])})" if names[1:] else "")
            shown = Settings.extra(name, "shown_default")
            if shown is None:
                default = field.default
                shown = "unset" if default is None else f"`{default}`"
            read = READ_AT[Settings.extra(name, "read")]
            lines.append(f"| {variable} | {shown} | {read} | {field.description} |")
    return "\n".join(lines[1:]) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        sys.stdout.write(markdown_table())
        return 0
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for var, value in settings.in_effect().items():
        print(f"{var}={value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
