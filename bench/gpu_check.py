#!/usr/bin/env python
"""Issue 23's device check: one run on a lent GPU that settles every question about the CUDA path, failing loudly.

    bash bench/gpu_check.sh "$OUT"                                         # on a GPU machine
    .venv/bin/python bench/gpu_check.py --device cpu --seconds 6 --shard-hours 0.003 --out /tmp/gpu-check

It checks the Python packages first (seconds), builds every cache untimed (the random model, the speech clips, the
shard), then runs the steps below. Each row is printed the moment it is known and appended to
OUT/gpu_check_rows.jsonl; the end is one summary table (printed, and OUT/gpu_check_summary.md) and exit status 1
if any row failed or was not run. A step that raises is a failed row: nothing falls back. SIGTERM (the time limit
of gpu_check.sh) marks the steps left as not run and still prints the table. On a CPU the CUDA-only rows say so and
the rest hold to the CPU's rule: bit-exact against encode_code.

Rows, in order (the production path first, so that a time limit cuts the least important):
  package encode_code   the reference, one clip at a time, exact fp32
  fp32                  the default engine: >= 99.99% of tokens equal to encode_code, codes diverse
  shard end to end      fp32: read_shard + encode_stream + TokensFileWriter gives a valid file equal to the pure
                        pass, spot-checked against encode_code; real time factors end to end and pure
  decode on the device  the package's decoder on the device: F * 480 finite samples, within 1e-3 of the CPU's
  fp32+overlap          bit-exact against fp32 (second stream)
  fp32+buckets          >= 99.99% equal to encode_code (graph padding, run eagerly)
  fp32+graphs           bit-exact against fp32+buckets (CUDA graphs)
  fp32+graphs, 2 kept   the same while graphs are evicted (max_graphs=2; evictions must happen)
  fp32+fused            >= 99.99% equal to encode_code (Triton activations)
  tf32, bf16, fp16      agreement with encode_code and fp32; latent rel. error under LATENT_BOUNDS
  bf16+graphs+overlap   the fastest combination, under bf16's bound
  cuda:1 fp32 (+graphs+overlap)   on the second GPU while device 0 is current, >= 99.99% (one GPU: says so)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_check_rows import (  # noqa: E402 - after the repository is on the path
    FAIL,
    INFO,
    LATENT_BOUNDS,
    NOT_HERE,
    NOT_RUN,
    Check,
    Report,
    Row,
    agreement,
    check_latents,
    check_tokens,
    relative_error,
)

CUDA_MIN_PERCENT = 99.99  # DESIGN: fp32 on CUDA may differ from the CPU oracle in a few tokens
DECODE_BOUND = 1e-3  # decoded audio on the device against the CPU decoder, relative L2
CPU_WARM_UP = 8000  # samples encoded before timing on a CPU: touches the memory-mapped weights
LOW_PRECISIONS = ("tf32", "bf16", "fp16", "bf16-fast")  # the steps that compare latents with fp32's
# What the driver imports, as the packages a fresh machine must have (module: distribution).
NEEDED = {"torch": "torch", "numpy": "numpy", "transformers": "transformers", "neucodec": "neucodec",
          "vector_quantize_pytorch": "vector-quantize-pytorch", "local_attention": "local-attention",
          "torchtune": "torchtune", "torchao": "torchao<0.18", "polars": "polars", "pyarrow": "pyarrow",
          "soundfile": "soundfile", "soxr": "soxr", "pydantic": "pydantic", "yaml": "pyyaml",
          "safetensors": "safetensors", "huggingface_hub": "huggingface-hub", "pytest": "pytest"}


class Stopped(BaseException):
    """SIGTERM arrived (the time limit): the steps left are reported as not run. A BaseException, so that no
    library's ``except Exception`` swallows it."""


@dataclasses.dataclass
class Pass:
    """One timed encode of the clip set."""

    codes: list
    latents: list | None
    wall: float
    gpu_mib: float | None
    busy: str
    graph_stats: dict | None


class DeviceCheck:
    """The state the steps share: device, clips, the reference's codes, the loaded parts, earlier passes."""

    def __init__(self, args) -> None:
        import torch

        from gpu_executor.encoder.engine import resolve_device

        self.args = args
        self.torch = torch
        self.device = resolve_device(args.device)
        self.cuda = self.device.type == "cuda"
        self.min_percent = CUDA_MIN_PERCENT if self.cuda else 100.0
        self.passes: dict[str, Pass] = {}
        self.refs: list[np.ndarray] | None = None
        self.fp32_engine = None

    # -- helpers ---------------------------------------------------------------------------------------------------
    def sync(self, device=None) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(device or self.device)

    def busy(self):
        from bench.e2e_shard import GpuBusy

        return GpuBusy(str(self.device))

    def busy_text(self, sampler) -> str:
        return sampler.share() if self.cuda else ""

    def gpu_mib_since(self, base: int | None) -> float | None:
        """Peak allocated since the last reset, above ``base`` (what was held before: the models)."""
        if not self.cuda:
            return None
        return (self.torch.cuda.max_memory_allocated(self.device) - base) / 2**20

    def gpu_base(self) -> int | None:
        if not self.cuda:
            return None
        self.sync()
        self.torch.cuda.reset_peak_memory_stats(self.device)
        return self.torch.cuda.memory_allocated(self.device)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()

    # -- steps -----------------------------------------------------------------------------------------------------
    def environment(self) -> Row:
        torch = self.torch
        note = f"python {platform.python_version()}, torch {torch.__version__}, device {self.device}"
        if self.cuda:
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            note += f" ({', '.join(names)}), CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
        return Row("environment", INFO, note=note)

    def caches(self) -> Row:
        """Everything built before any timing: the model, the clips, the shard and its waves in memory."""
        from bench.e2e_shard import build_shard, read_waves, speech_clips
        from gpu_executor.codec.random_model import cached_random_model, default_cache_root
        from gpu_executor.encoder.loading import load_parts
        from resources.bucket import open_bucket
        from resources.shard_reader import available_cores, default_decode_workers

        times = {}
        t0 = time.perf_counter()
        self.dirs = cached_random_model()
        times["random model"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.clips = speech_clips(self.args.seconds, self.args.seed)
        self.audio_s = sum(len(c) for c in self.clips) / 16000
        times["speech"] = time.perf_counter() - t0
        lengths = [len(c) / 16000 for c in self.clips]
        note = f"{len(self.clips)} clips, {self.audio_s:.1f} s ({min(lengths):.1f}-{max(lengths):.1f} s)"
        if "shard" in self.args.steps:
            t0 = time.perf_counter()
            hours = self.args.shard_hours
            root = (Path(self.args.shard_root) if self.args.shard_root
                    else default_cache_root() / f"e2e-shard-{hours:g}h-seed{self.args.seed}")
            self.shard_root = root
            self.segments, self.shard_audio_s = build_shard(root, hours, self.args.seed, available_cores())
            self.bucket = open_bucket(str(root))
            self.workers = default_decode_workers()
            self.shard_items = read_waves(self.bucket, self.workers)
            times["shard"] = time.perf_counter() - t0
            note += (f"; shard {self.segments} segments, {self.shard_audio_s / 3600:.3f} h, {self.workers} decode "
                     "threads")
        t0 = time.perf_counter()
        self.parts = load_parts(self.dirs.model_dir, self.dirs.semantic_model_dir)
        self.reference = self._load_reference()
        times["model loads"] = time.perf_counter() - t0
        return Row("caches", INFO, note=note + "; built in " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))

    def _load_reference(self):
        from bench.encode_bench import load_reference

        return load_reference(str(self.dirs.model_dir), str(self.dirs.semantic_model_dir), str(self.device))

    def reference_codes(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        """``encode_code`` one clip at a time, in exact fp32 (TF32 off through the engine's switch)."""
        from gpu_executor.encoder.tf32_switch import tf32_mode
        from tests.fixtures.model import reference_codes

        with tf32_mode(self.device, False):
            return [reference_codes(self.reference, w) for w in waves]

    def reference_pass(self) -> Row:
        self.reference_codes(self.clips if self.cuda else [self.clips[0][:CPU_WARM_UP]])  # warm-up, as the engine
        base = self.gpu_base()
        with self.busy() as sampler:
            t0 = time.perf_counter()
            self.refs = self.reference_codes(self.clips)
            self.sync()
            wall = time.perf_counter() - t0
        return Row("package encode_code", INFO, rtf=self.audio_s / wall, gpu_peak_mib=self.gpu_mib_since(base),
                   busy=self.busy_text(sampler), note=f"{sum(map(len, self.refs)):,} reference tokens")

    def encode_pass(self, precision: str = "fp32", device=None, keep: bool = False, latents: bool = False,
                    **options) -> Pass:
        """Build an engine over the loaded parts, warm it up (the whole set on a GPU), time one encode of the
        clips, then (untimed) their latents."""
        from gpu_executor.encoder import NeucodecEncoder

        parts = dataclasses.replace(self.parts, shared=True)  # a low precision copies, never casts, the parts
        enc = NeucodecEncoder(parts, device=device or self.device, precision=precision, **options)
        enc.encode(self.clips if self.cuda else [self.clips[0][:CPU_WARM_UP]])  # a GPU: kernels, per-shape choices
        base = self.gpu_base()
        with self.busy() as sampler:
            t0 = time.perf_counter()
            codes = list(enc.encode(self.clips))
            self.sync(enc.device)
            wall = time.perf_counter() - t0
        result = Pass(codes, None, wall, self.gpu_mib_since(base), self.busy_text(sampler), enc.graph_stats)
        if latents:
            result.latents = enc.encode_latents(self.clips)
        if keep:
            self.fp32_engine = enc
        del enc
        self.free()
        return result

    def need(self, name: str) -> Pass:
        if name not in self.passes:
            raise RuntimeError(f"the {name} row did not run: nothing to compare with")
        return self.passes[name]

    def need_refs(self) -> list[np.ndarray]:
        if self.refs is None:
            raise RuntimeError("the package encode_code row did not run: no reference codes")
        return self.refs

    def variant_row(self, name: str, result: Pass, checks: list[Check], baseline: str = "", note: str = "") -> Row:
        """The row of one pass: its checks, and its figures against encode_code, a baseline and fp32's latent."""
        vs_base = f"{agreement(result.codes, self.need(baseline).codes):.3f}% vs {baseline}" if baseline else ""
        fp32 = self.passes.get("fp32")
        latent = None
        if result.latents is not None and fp32 is not None and fp32 is not result:
            latent = relative_error(result.latents, fp32.latents)[0]
        return Row.judged(name, checks, rtf=self.audio_s / result.wall,
                          vs_reference=None if self.refs is None else agreement(result.codes, self.refs),
                          vs_baseline=vs_base, latent=latent, gpu_peak_mib=result.gpu_mib, busy=result.busy, note=note)

    def fp32(self) -> Row:
        latents = any(step in self.args.steps for step in LOW_PRECISIONS)
        result = self.passes["fp32"] = self.encode_pass(keep=True, latents=latents)
        return self.variant_row("fp32", result, [check_tokens(result.codes, self.need_refs(), self.min_percent,
                                                              "encode_code")])

    def shard_end_to_end(self) -> Row:
        from bench.e2e_shard import encode_to_file, pure_encode

        enc = self.need_fp32_engine()
        base = self.gpu_base()
        e2e = encode_to_file(enc, self.bucket, self.workers, self.shard_root / "out" / "neucodec_tokens.parquet")
        gpu_mib = self.gpu_mib_since(base)
        pure, pure_s = pure_encode(enc, self.shard_items)
        ids = sorted(pure)
        checks = [Check(not e2e.problems and e2e.rows == self.segments,
                        f"tokens file: {e2e.rows} rows of {self.segments} segments, "
                        + ("valid" if not e2e.problems else "INVALID: " + "; ".join(e2e.problems))),
                  check_tokens([e2e.codes.get(k, np.zeros(0, np.uint16)) for k in ids], [pure[k] for k in ids],
                               100.0, "the pure pass")]
        waves = dict(self.shard_items)
        step = max(1, len(ids) // self.args.spot_segments)
        spot = ids[::step][: self.args.spot_segments]
        refs = self.reference_codes([waves[k] for k in spot])
        spot_s = sum(len(waves[k]) for k in spot) / 16000
        checks.append(check_tokens([e2e.codes.get(k, np.zeros(0, np.uint16)) for k in spot], refs, self.min_percent,
                                   f"encode_code ({len(spot)} segments, {spot_s:.0f} s)"))
        return Row.judged("shard end to end", checks, rtf=self.shard_audio_s / e2e.seconds, gpu_peak_mib=gpu_mib,
                          busy=e2e.busy if self.cuda else "", note=(
                              f"{self.shard_audio_s / 3600:.2f} h; pure encode {self.shard_audio_s / pure_s:.1f}x "
                              f"real time; end to end / pure {e2e.seconds / pure_s:.3f} (target <= 1.1); inside "
                              f"encode calls {e2e.encode_seconds / e2e.seconds:.0%} of the wall"))

    def need_fp32_engine(self):
        if self.fp32_engine is None:
            raise RuntimeError("the fp32 row did not run: no engine to reuse")
        return self.fp32_engine

    def decode(self) -> Row:
        from gpu_executor.codec.decoder import DECODER_SAMPLE_RATE, NeucodecDecoder

        fp32 = self.passes.get("fp32")
        if fp32 is None:
            raise RuntimeError("the fp32 row did not run: no codes to decode")
        picked = [c for c in sorted(fp32.codes, key=len) if len(c) <= 500][-3:] or [fp32.codes[0][:500]]
        decoder = NeucodecDecoder.from_pretrained(self.dirs.model_dir, device=self.device)
        decoder.decode(picked[0][:50])  # warm-up
        t0 = time.perf_counter()
        audio = [decoder.decode(c) for c in picked]
        self.sync()
        wall = time.perf_counter() - t0
        checks = [Check(all(len(a) == len(c) * 480 and np.isfinite(a).all() for a, c in zip(audio, picked)),
                        f"{len(picked)} clips decoded to F x 480 finite samples")]
        if self.cuda:
            cpu = NeucodecDecoder.from_pretrained(self.dirs.model_dir, device="cpu")
            err, _ = relative_error(audio, [cpu.decode(c) for c in picked])
            checks.append(Check(err <= DECODE_BOUND, f"rel. error vs the CPU decoder {err:.2e} "
                                                     f"(bound {DECODE_BOUND:g})"))
        else:
            checks.append(Check(True, "on a CPU the decoder is its own oracle"))
        decoded_s = sum(len(a) for a in audio) / DECODER_SAMPLE_RATE
        return Row.judged("decode on the device", checks, rtf=decoded_s / wall)

    def cuda_only(self, name: str) -> Row | None:
        if self.cuda:
            return None
        return Row(name, NOT_HERE, note="CUDA only")

    def overlap(self) -> Row:
        name = "fp32+overlap"
        if (row := self.cuda_only(name)) is not None:
            return row
        result = self.passes[name] = self.encode_pass(overlap_stream=True)
        return self.variant_row(name, result, [check_tokens(result.codes, self.need("fp32").codes, 100.0, "fp32")],
                                baseline="fp32")

    def buckets(self) -> Row:
        result = self.passes["fp32+buckets"] = self.encode_pass(graphs="buckets")
        return self.variant_row("fp32+buckets", result,
                                [check_tokens(result.codes, self.need_refs(), self.min_percent, "encode_code")],
                                baseline="fp32")

    def graphs(self, max_graphs: int | None = None) -> Row:
        name = "fp32+graphs" if max_graphs is None else f"fp32+graphs, {max_graphs} kept"
        if (row := self.cuda_only(name)) is not None:
            return row
        options = {"graphs": "cuda"} if max_graphs is None else {"graphs": "cuda", "max_graphs": max_graphs}
        result = self.passes[name] = self.encode_pass(**options)
        checks = [check_tokens(result.codes, self.need("fp32+buckets").codes, 100.0, "fp32+buckets")]
        stats = result.graph_stats or {}
        note = (f"{stats.get('captured')} graphs captured, {stats.get('kept')} kept, "
                f"{stats.get('eager_batches')} batches eager")
        if max_graphs is not None:
            checks.append(Check(stats.get("captured", 0) > stats.get("kept", 0), f"evictions: {note}"))
            note = "timing includes re-captures"
        return self.variant_row(name, result, checks, baseline="fp32+buckets", note=note)

    def fused(self) -> Row:
        name = "fp32+fused"
        if (row := self.cuda_only(name)) is not None:
            return row
        result = self.passes[name] = self.encode_pass(fused_activation=True)
        return self.variant_row(name, result, [check_tokens(result.codes, self.need_refs(), self.min_percent,
                                                            "encode_code")], baseline="fp32")

    def precision(self, name: str, precision: str, **options) -> Row:
        """A low precision (with fast paths in ``options``): its latent against fp32's, under LATENT_BOUNDS."""
        if precision == "tf32" or options:
            if (row := self.cuda_only(name)) is not None:
                return row
        try:
            result = self.passes[name] = self.encode_pass(precision, latents=True, **options)
        except ValueError as exc:
            if self.cuda:
                raise
            return Row(name, NOT_HERE, note=str(exc))  # bf16/fp16 refused on a CPU without native support
        check = check_latents(result.latents, self.need("fp32").latents, LATENT_BOUNDS[precision], "fp32")
        return self.variant_row(name, result, [check], baseline="fp32")

    def second_gpu(self) -> list[Row]:
        torch = self.torch
        names = ["cuda:1 fp32", "cuda:1 fp32+graphs+overlap"]
        if not self.cuda or torch.cuda.device_count() < 2:
            count = torch.cuda.device_count() if self.cuda else 0
            return [Row(n, NOT_HERE, note=f"the machine has {count} GPU(s)") for n in names]
        from gpu_executor.encoder.loading import load_parts

        torch.cuda.set_device(0)  # the case the fix is for: the engine's device is not the current one
        self.parts = load_parts(self.dirs.model_dir, self.dirs.semantic_model_dir)
        rows = []
        for name, options in zip(names, ({}, {"graphs": "cuda", "overlap_stream": True})):
            result = self.encode_pass(device="cuda:1", **options)
            refs = self.need_refs()
            rows.append(Row.judged(name, [check_tokens(result.codes, refs, CUDA_MIN_PERCENT, "encode_code")],
                                   rtf=self.audio_s / result.wall, vs_reference=agreement(result.codes, refs),
                                   vs_baseline=f"{agreement(result.codes, self.need('fp32').codes):.3f}% vs fp32 "
                                               "on cuda:0"))
        return rows


def check_steps(check: DeviceCheck) -> list[tuple[str, Callable[[], Row | list[Row]]]]:
    """Every step in running order, by the name ``--steps`` knows it by (see the module docstring)."""
    return [
        ("environment", check.environment),
        ("caches", check.caches),
        ("reference", check.reference_pass),
        ("fp32", check.fp32),
        ("shard", check.shard_end_to_end),
        ("decode", check.decode),
        ("overlap", check.overlap),
        ("buckets", check.buckets),
        ("graphs", check.graphs),
        ("graphs-evict", lambda: check.graphs(max_graphs=2)),
        ("fused", check.fused),
        ("tf32", lambda: check.precision("tf32", "tf32")),
        ("bf16", lambda: check.precision("bf16", "bf16")),
        ("fp16", lambda: check.precision("fp16", "fp16")),
        ("bf16-fast", lambda: check.precision("bf16+graphs+overlap", "bf16", graphs="cuda", overlap_stream=True)),
        ("cuda1", check.second_gpu),
    ]


FIRST_STEPS = ("environment", "caches", "reference")  # what every other step needs
STEP_NAMES = ("fp32", "shard", "decode", "overlap", "buckets", "graphs", "graphs-evict", "fused", "tf32", "bf16",
              "fp16", "bf16-fast", "cuda1")


def missing_packages() -> list[str]:
    missing = []
    for module, dist in NEEDED.items():
        try:
            if module == "neucodec":
                from gpu_executor.codec.neucodec_compat import import_neucodec

                import_neucodec()
            else:
                importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any import failure is a missing or broken package
            missing.append(f"{dist} ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})")
    return missing


class StopOnSignal:
    """A signal raises Stopped in the main thread, except while a step's rows and its count are written: then it is
    raised at the end of that block, so a stop right after a row never reports the step as both done and not run.
    (Masking the signal would not do: the kernel hands it to any thread that does not mask it, torch's included.)"""

    def __init__(self) -> None:
        self.holding = False
        self.pending: str | None = None

    def __call__(self, signum: int, _frame: object) -> None:
        name = signal.Signals(signum).name
        if self.holding:
            self.pending = name
        else:
            raise Stopped(name)

    @contextlib.contextmanager
    def held(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False
            if self.pending:
                raise Stopped(self.pending)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".", help="folder for gpu_check_rows.jsonl and gpu_check_summary.md")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seconds", type=float, default=300.0, help="audio of the clip set (default 300 s)")
    ap.add_argument("--shard-hours", type=float, default=1.0, help="audio of the end-to-end shard (default 1 h)")
    ap.add_argument("--shard-root", default=None, help="where the shard is generated (default: the neucodec cache)")
    ap.add_argument("--spot-segments", type=int, default=24, help="shard segments checked against encode_code")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", default=",".join(STEP_NAMES),
                    help=f"steps to run after {', '.join(FIRST_STEPS)} (default all: {','.join(STEP_NAMES)})")
    ap.add_argument("--speech-only", action="store_true",
                    help="build the speech cache (the espeak-ng utterances of the clips and the shard) and stop: a "
                    "machine without espeak-ng can then be given $NEUCODEC_CACHE_DIR/e2e-utterances-v1")
    args = ap.parse_args(argv)
    args.steps = [x.strip() for x in args.steps.split(",") if x.strip()]
    if unknown := sorted(set(args.steps) - set(STEP_NAMES)):
        ap.error(f"--steps: unknown {unknown}; choose from {','.join(STEP_NAMES)}")

    report = Report(Path(args.out))

    stop = StopOnSignal()
    signal.signal(signal.SIGTERM, stop)
    try:
        missing = missing_packages()
        if missing:
            report.add(Row("python packages", FAIL, [Check(False, "missing or broken: " + "; ".join(missing))]))
            return report.finish()
        if args.speech_only:
            from bench.e2e_shard import utterances
            from gpu_executor.codec.random_model import default_cache_root

            report.add(Row("speech cache", INFO, note=f"{len(utterances())} utterances in "
                                                      f"{default_cache_root() / 'e2e-utterances-v1'}"))
            return report.finish()
        check = DeviceCheck(args)
    except Stopped as exc:
        report.add(Row("python packages", NOT_RUN, note=f"stopped by {exc}"))
        return report.finish()
    steps = [(name, step) for name, step in check_steps(check) if name in FIRST_STEPS or name in args.steps]

    started = time.monotonic()
    finished = 0  # steps fully reported
    try:
        for name, step in steps:
            t0 = time.monotonic()
            try:
                rows = step()
            except Exception as exc:  # noqa: BLE001 - a step that raises is a failed row; the next steps still run
                traceback.print_exc()
                rows = Row(name, FAIL, [Check(False, f"{type(exc).__name__}: {exc}")])
                if name in FIRST_STEPS:  # nothing after it can run
                    report.add(rows)
                    return report.finish()
            with stop.held():  # a step's rows and its count go together, or neither
                for row in rows if isinstance(rows, list) else [rows]:
                    row.step_s = time.monotonic() - t0
                    report.add(row)
                finished += 1
    except Stopped as exc:
        for left, _ in steps[finished:]:
            report.add(Row(left, NOT_RUN, note=f"stopped by {exc} after {time.monotonic() - started:.0f} s"))
    header = (f"device check on {check.device} ({time.monotonic() - started:.0f} s); clips {args.seconds:g} s, "
              f"shard {args.shard_hours:g} h")
    return report.finish(header)


if __name__ == "__main__":
    sys.exit(main())
