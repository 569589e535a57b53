#!/usr/bin/env python
"""CPU side of a shard: FLAC decode + soxr HQ resample throughput per core, and the cores a fast GPU needs.

Why: an encoder at 2,000x real time waits on the reader unless enough cores decode. This measures the reader's
own preparation (``resources.audio.load_wave``: soundfile -> channel mean -> soxr HQ to 16 kHz) on real
espeak-ng speech in the corpus formats (16 kHz mono PCM_16, 44.1 kHz stereo PCM_16, 48 kHz stereo PCM_24),
first on one thread (audio seconds per wall second per core), then on a pool of threads as the reader runs it
(does it scale, or does the GIL hold it back?).

    .venv/bin/python bench/decode_bench.py                   # 300 s of speech per format, ~10 s
    .venv/bin/python bench/decode_bench.py --seconds 30 --target 2000
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, sample rate, channels, FLAC subtype): the formats of the production corpus (resources/sample_bucket.py)
FORMATS = (("16k mono", 16_000, 1, "PCM_16"), ("44.1k stereo", 44_100, 2, "PCM_16"),
           ("48k stereo", 48_000, 2, "PCM_24"))
SENTENCES = ("The weather is pleasant today, and we will meet at the station tomorrow morning.",
             "She reads a book every evening while the rain falls quietly outside the window.")


def speech_members(seconds: float, sr: int, channels: int, subtype: str, seg_seconds: float = 6.0) -> list[bytes]:
    """FLAC members of real espeak-ng speech, ``seg_seconds`` each, ``seconds`` in all."""
    from resources.sample_bucket import espeak, flac_bytes

    speech = []
    total = 0
    k = 0
    while total < 22_050 * seg_seconds:
        samples, _ = espeak(SENTENCES[k % 2], "en", ("m1", "f2", "m3")[k % 3], 40 + 7 * k % 30, 150 + k % 30)
        speech.append(samples)
        total += len(samples)
        k += 1
    wave = np.concatenate(speech)[: int(22_050 * seg_seconds)]
    data, _ = flac_bytes(wave, sr, channels, subtype)
    return [data] * max(1, round(seconds / seg_seconds))


def decode_split(members: list[bytes]) -> tuple[float, float]:
    """CPU seconds of this thread in decode and in resample over ``members``: per-core cost, unaffected by other
    processes on a shared machine (wall time there counts their share too)."""
    from resources.audio import decode, prepare

    t_dec = t_res = 0.0
    for data in members:
        t0 = time.thread_time()
        samples, sr = decode(data)
        t1 = time.thread_time()
        prepare(samples, sr)
        t_res += time.thread_time() - t1
        t_dec += t1 - t0
    return t_dec, t_res


def pooled(members: list[bytes], workers: int, repeat: int) -> tuple[float, float]:
    """Wall and process CPU seconds of ``load_wave`` over ``members`` x ``repeat`` on a thread pool, as the shard
    reader runs it."""
    from resources.audio import load_wave

    work = members * repeat
    with ThreadPoolExecutor(max_workers=workers) as pool:
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in pool.map(load_wave, work):
            pass
        return time.perf_counter() - t0, time.process_time() - c0


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=300.0, help="speech per format (default 300 s)")
    ap.add_argument("--target", type=float, default=2000.0, help="the GPU's real-time factor to feed (2000)")
    ap.add_argument("--workers", type=int, default=None, help="threads of the pooled run (default: all cores)")
    args = ap.parse_args()

    import soundfile
    import soxr

    from resources.shard_reader import default_decode_workers

    cores = available_cores()
    workers = args.workers or cores
    print(f"{cores} cores available, soundfile {soundfile.__version__} (libsndfile "
          f"{soundfile.__libsndfile_version__}), soxr {soxr.__version__}; target {args.target:g}x real time")
    print("\n| format | audio s | decode x/core | resample x/core | decode+resample x/core "
          f"| {workers} threads: wall x | CPU s per audio s | cores for {args.target:g}x |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    slowest = math.inf
    for label, sr, channels, subtype in FORMATS:
        members = speech_members(args.seconds, sr, channels, subtype)
        from resources.audio import decode

        audio_s = sum(decode(m)[0].shape[0] for m in members) / sr
        decode_split(members[:2])  # warm-up: libraries loaded, soxr plans built
        t_dec, t_res = decode_split(members)
        one = audio_s / (t_dec + t_res)
        repeat = max(1, workers)
        wall, cpu = pooled(members, workers, repeat)
        many = audio_s * repeat / wall
        slowest = min(slowest, one)
        print(f"| {label} | {audio_s:.0f} | {audio_s / t_dec:.0f} | {audio_s / t_res:.0f} | {one:.0f} "
              f"| {many:.0f} | {cpu / (audio_s * repeat):.5f} | {math.ceil(args.target / one)} |", flush=True)
    need = math.ceil(args.target / slowest)
    print(f"\nworst format: {slowest:.0f}x real time per core (CPU time of one thread), so a {args.target:g}x GPU "
          f"needs {need} decode cores. The thread pool's wall figure reaches {workers}x the per-core one only on idle "
          "cores (soundfile and soxr release the GIL).")
    print(f"default_decode_workers() here: {default_decode_workers()} (NEUCODEC_DECODE_WORKERS overrides)")
    print("note: the per-core figures are CPU time, robust on a shared machine; the pooled wall figure is not.")


if __name__ == "__main__":
    main()
