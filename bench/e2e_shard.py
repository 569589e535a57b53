#!/usr/bin/env python
"""One shard end to end against pure encoding: does the reader keep up with the encoder?

Why: a fast GPU is wasted if tar reading, FLAC decoding, resampling or parquet writing make it wait (issue 13's
target: end to end within 1.1x of pure encoding). This generates a shard of ``--hours`` of real espeak-ng speech as
44.1/48 kHz stereo FLAC (cached), then times
  - pure encode: the shard's waves already in memory through ``encode_stream``;
  - end to end: ``resources.shard_reader.read_shard`` + ``encode_stream`` + ``TokensFileWriter`` (validated after),
and prints both, their ratio, the GPU's peak memory and its busy share (NVML samples) during the end-to-end run.
It exits 1 when the tokens file is invalid or differs from the pure pass; a failing encoder option fails the run
(nothing falls back). ``bench/gpu_check.py`` runs the same steps in fp32 and also checks them against encode_code.

    .venv/bin/python bench/e2e_shard.py --hours 0.01                            # CPU smoke run
    python bench/e2e_shard.py --hours 1 --device cuda --precision bf16          # on a GPU box
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PREFIX = "e2e/en/shard_000000"
FORMATS = ((44_100, "PCM_16"), (48_000, "PCM_24"))  # stereo FLAC, as most of the corpus


def utterances(count: int = 24) -> list[tuple[str, np.ndarray]]:
    """Distinct espeak-ng utterances (text, 22.05 kHz samples): several voices, pitches and speeds. Cached as 16-bit
    FLAC (espeak-ng speaks 16-bit samples) under the neucodec cache, so that a machine without espeak-ng can be
    given them (a few MB); the samples are always the ones read back from the cache."""
    import soundfile as sf

    from gpu_executor.codec.random_model import default_cache_root
    from resources.sample_bucket import SENTENCES, VARIANTS, espeak

    cache = default_cache_root() / "e2e-utterances-v1"
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(count):
        lang = ("en", "hi", "ta", "bn")[k % 4]
        text = " ".join(SENTENCES[lang][(k + j) % 4] for j in range(1 + k % 3))
        path = cache / f"{k:02d}.flac"
        if not path.is_file():
            samples, sr = espeak(text, lang, VARIANTS[k % len(VARIANTS)], 35 + (7 * k) % 35, 145 + (11 * k) % 40)
            part = path.with_suffix(".part.flac")
            sf.write(part, samples, sr, format="FLAC", subtype="PCM_16")
            part.replace(path)
        samples, _ = sf.read(path, dtype="float32")
        out.append((text, samples))
    return out


def speech_clips(total_seconds: float, seed: int) -> list[np.ndarray]:
    """16 kHz clips of ``utterances()`` joined with short pauses, durations log-uniform in 0.5-25 s (about one per
    8 s of audio), resampled with soxr HQ as the platform prepares audio."""
    import soxr

    pool = [soxr.resample(w, 22_050, 16_000, quality="HQ").astype(np.float32) for _, w in utterances()]
    rng = np.random.default_rng(seed)
    clips, total = [], 0.0
    while total < total_seconds:
        seconds = float(np.exp(rng.uniform(np.log(0.5), np.log(25.0))))
        seconds = min(seconds, max(0.5, total_seconds - total + 0.5))
        target = int(seconds * 16_000)
        parts, have = [], 0
        while have < target:
            wave = pool[int(rng.integers(len(pool)))]
            parts += [wave, np.zeros(int(rng.integers(800, 4000)), np.float32)]
            have += len(wave) + len(parts[-1])
        clip = np.concatenate(parts)[:target]
        clips.append((0.9 * clip / max(1e-6, float(np.abs(clip).max()))).astype(np.float32))
        total += seconds
    return clips


def segment_flac(parts: list[np.ndarray], sr: int, subtype: str, seed: int) -> tuple[bytes, float]:
    import soundfile as sf
    import soxr

    rng = np.random.default_rng(seed)
    joined = []
    for p in parts:
        joined += [p, np.zeros(int(rng.integers(1000, 6000)), np.float32)]
    x = soxr.resample(np.concatenate(joined), 22_050, sr, quality="HQ").astype(np.float32)
    x = np.clip(0.9 * x / max(1e-6, float(np.abs(x).max())), -1, 1)
    buf = io.BytesIO()
    sf.write(buf, np.stack([x, 0.8 * x], axis=1), sr, format="FLAC", subtype=subtype)
    return buf.getvalue(), len(x) / sr


def build_shard(root: Path, hours: float, seed: int, workers: int) -> tuple[int, float]:
    """Write ``audio.tar`` + ``metadata.parquet`` of ``hours`` of speech under ``root/PREFIX`` (kept if present)."""
    import polars as pl

    shard = root / PREFIX
    done = shard / "done.txt"
    if done.is_file():
        n, seconds = done.read_text().split()
        return int(n), float(seconds)
    shard.mkdir(parents=True, exist_ok=True)
    pool_of = utterances()
    rng = np.random.default_rng(seed)
    plans = []  # (segment id, utterance indices, format, seed): segments of 1-20 s, about ``hours`` in all
    total = 0.0
    while total < hours * 3600:
        picks = [int(i) for i in rng.integers(0, len(pool_of), int(rng.integers(1, 6)))]
        seconds = sum(len(pool_of[i][1]) for i in picks) / 22_050
        plans.append((f"spk{len(plans) % 7:02d}_{len(plans):06d}", picks, FORMATS[len(plans) % 2], len(plans)))
        total += seconds
    with ThreadPoolExecutor(workers) as pool:
        made = list(pool.map(lambda p: segment_flac([pool_of[i][1] for i in p[1]], *p[2], seed + p[3]), plans))
    with tarfile.open(shard / "audio.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for (sid, _, _, _), (data, _) in zip(plans, made):
            info = tarfile.TarInfo(f"{sid}.flac")
            info.size, info.mtime = len(data), 0
            tar.addfile(info, io.BytesIO(data))
    pl.DataFrame({"segment_id": [p[0] for p in plans],
                  "text": [" ".join(pool_of[i][0] for i in p[1]) for p in plans],
                  "duration": [m[1] for m in made]}).write_parquet(shard / "metadata.parquet")
    seconds = sum(m[1] for m in made)
    done.write_text(f"{len(plans)} {seconds}")
    return len(plans), seconds


class GpuBusy:
    """Samples NVML utilization (share of time a kernel ran) every 50 ms while active."""

    def __init__(self, device: str) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._index = None
        if device.startswith("cuda"):  # an index, resolved here: the sampler thread then makes no CUDA call
            import torch

            dev = torch.device(device)
            self._index = dev.index if dev.index is not None else torch.cuda.current_device()

    def _run(self) -> None:
        import torch

        while not self._stop.wait(0.05):
            try:
                self.samples.append(torch.cuda.utilization(self._index))
            except Exception:  # noqa: BLE001 - no NVML (pynvml) here: the share stays unknown
                return

    def __enter__(self) -> "GpuBusy":
        if self.device.startswith("cuda"):
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def share(self) -> str:
        return f"{np.mean(self.samples):.0f}% ({len(self.samples)} samples)" if self.samples else "n/a (no NVML)"


def read_waves(bucket, workers: int) -> list[tuple[str, np.ndarray]]:
    """The shard's (segment id, 16 kHz wave) pairs in memory: the pure-encode pass's input."""
    from resources.shard_reader import read_shard

    with read_shard(bucket, PREFIX, workers=workers) as reader:
        return [(s.segment_id, s.wave) for s in reader.segments()]


def pure_encode(enc, items: list[tuple[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], float]:
    """Codes per segment through ``encode_stream`` from memory, and the wall seconds it took."""
    t0 = time.perf_counter()
    codes = dict(enc.encode_stream(items))
    sync(enc.device)
    return codes, time.perf_counter() - t0


@dataclass
class EndToEnd:
    seconds: float  # wall time: read + decode + encode + write
    encode_seconds: float  # of which inside encode calls
    rows: int
    problems: list[str]  # the tokens file's validation problems (empty: valid)
    codes: dict[str, np.ndarray]  # read back from the file
    busy: str  # GPU busy share during the run


def encode_to_file(enc, bucket, workers: int, out: Path) -> EndToEnd:
    """The shard through ``read_shard`` + ``encode_stream`` + ``TokensFileWriter``, validated and read back."""
    from resources.shard_reader import read_shard
    from resources.tokens_file import TokensFileWriter, validate_tokens_file

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with GpuBusy(enc.device) as busy, read_shard(bucket, PREFIX, workers=workers) as reader:
        def waves():
            for seg in reader.segments():
                seconds[seg.segment_id] = seg.seconds
                yield seg.segment_id, seg.wave

        with TokensFileWriter(out, enc.provenance) as writer:
            stream = enc.encode_stream(waves())
            for sid, codes in stream:
                writer.add(sid, codes)
            writer.close([(f.segment_id, f.reason) for f in reader.failures])
        sync(enc.device)
    wall = time.perf_counter() - t0
    report = validate_tokens_file(out, seconds)
    return EndToEnd(wall, stream.encode_seconds, report.rows, [] if report.ok else list(report.problems),
                    stream_codes(out), busy.share())


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--graphs", default="off", help="off, cuda or buckets (the engine's graphs option)")
    ap.add_argument("--overlap", action="store_true", help="second CUDA stream for upload and fbank")
    ap.add_argument("--workers", type=int, default=None, help="decode threads (default: default_decode_workers())")
    ap.add_argument("--root", default=None, help="where the shard is generated (default: the neucodec cache)")
    ap.add_argument("--model", default=None, help="neucodec hub id or folder (default: the cached random model)")
    ap.add_argument("--semantic-model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from gpu_executor.codec.random_model import cached_random_model, default_cache_root
    from gpu_executor.encoder import NeucodecEncoder
    from gpu_executor.encoder.engine import resolve_device
    from resources.bucket import open_bucket
    from resources.shard_reader import available_cores, default_decode_workers

    device = str(resolve_device(args.device))
    cuda = device.startswith("cuda")
    precision = args.precision or ("bf16" if cuda else "fp32")
    workers = args.workers or default_decode_workers()
    root = Path(args.root) if args.root else default_cache_root() / f"e2e-shard-{args.hours:g}h-seed{args.seed}"
    t0 = time.perf_counter()
    segments, audio_s = build_shard(root, args.hours, args.seed, available_cores())
    size_mib = (root / PREFIX / "audio.tar").stat().st_size / 2**20
    print(f"shard: {segments} segments, {audio_s / 3600:.3f} h of 44.1/48 kHz stereo FLAC ({size_mib:.0f} MiB), "
          f"ready in {time.perf_counter() - t0:.1f} s")

    if args.model is None:
        dirs = cached_random_model()
        model, semantic = str(dirs.model_dir), str(dirs.semantic_model_dir)
    else:
        model, semantic = args.model, args.semantic_model or "facebook/w2v-bert-2.0"
    bucket = open_bucket(str(root))
    # In memory first (untimed): the waves for the pure-encode pass, and a full warm-up on GPUs.
    items = read_waves(bucket, workers)
    warm = [w for _, w in items] if cuda else [items[0][1][:16000]]
    options = {"graphs": args.graphs, "overlap_stream": args.overlap}
    enc = load_and_warm(NeucodecEncoder, model, semantic, device, precision, options, warm)
    print(f"{workers} decode threads of {available_cores()} cores")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    pure_codes, pure_s = pure_encode(enc, items)
    del items
    e2e = encode_to_file(enc, bucket, workers, root / "out" / "neucodec_tokens.parquet")
    same = pure_codes.keys() == e2e.codes.keys() and all(np.array_equal(pure_codes[k], c)
                                                         for k, c in e2e.codes.items())
    gpu_peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "n/a"
    print(f"\n| figure | value |\n|---|---:|\n| audio | {audio_s:.0f} s ({segments} segments) |"
          f"\n| pure encode | {pure_s:.1f} s ({audio_s / pure_s:.1f}x real time) |"
          f"\n| end to end (read + decode + encode + write) | {e2e.seconds:.1f} s "
          f"({audio_s / e2e.seconds:.1f}x real time) |"
          f"\n| end to end / pure | {e2e.seconds / pure_s:.3f} (target <= 1.1) |"
          f"\n| time inside encode calls, end to end | {e2e.encode_seconds:.1f} s "
          f"({e2e.encode_seconds / e2e.seconds * 100:.0f}% of the wall) |"
          f"\n| GPU peak memory | {gpu_peak} |\n| GPU busy, end to end | {e2e.busy} |"
          f"\n| tokens file | {e2e.rows} rows, {'INVALID: ' + '; '.join(e2e.problems) if e2e.problems else 'valid'},"
          f" {'equal to' if same else 'DIFFERENT from'} the pure pass |")
    if e2e.problems or not same or e2e.rows != segments:
        sys.exit(1)


def load_and_warm(cls, model: str, semantic: str, device: str, precision: str, options: dict, warm: list):
    t0 = time.perf_counter()
    enc = cls.from_pretrained(model, semantic, device=device, precision=precision, **options)
    load_s = time.perf_counter() - t0
    enc.encode(warm)
    print(f"encoder {precision} on {device} {options}: loaded in {load_s:.1f} s, warmed up in "
          f"{time.perf_counter() - t0 - load_s:.1f} s")
    return enc


def stream_codes(path: Path) -> dict[str, np.ndarray]:
    from resources.tokens_file import read_tokens_file

    frame, _ = read_tokens_file(path)
    return {sid: np.frombuffer(b, dtype="<u2") for sid, b in zip(frame["segment_id"], frame["neucodec_tokens"])}


if __name__ == "__main__":
    main()
