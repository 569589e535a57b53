#!/usr/bin/env python
"""Benchmark: the package's ``NeuCodec.encode_code`` (one clip at a time) vs ``NeucodecEncoder.encode``.

Same weights, same machine, one process. Prints audio-seconds per wall-second for both, their ratio, token
agreement with the reference, peak resident memory, and for the fast modes (tf32, bf16, fp16) their token agreement
with our fp32 pass and the relative error of their pre-quantization latent against it (meaningful on random
weights too: it is the quantizer's input, before rounding to codes). Without --model it uses the cached random full-size
model (the hub is not needed); clips are synthesized speech (espeak-ng), a mix of 0.5-25 s.

    .venv/bin/python bench/encode_bench.py --seconds 60                # quick
    .venv/bin/python bench/encode_bench.py                             # the issue's spec: ~8 min, ~60 clips
    .venv/bin/python bench/encode_bench.py --precision fp32,tf32,bf16,fp16,bf16+graphs+overlap --device cuda
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_check_rows import agreement, relative_error  # noqa: E402 - after the repository is on the path


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_clips(total_seconds: float, seed: int) -> list[np.ndarray]:
    """About one clip per 8 s of audio, durations log-uniform in 0.5-25 s, synthesized speech."""
    from gpu_executor.codec.random_model import default_cache_root
    from tests.fixtures.model import speech_of_duration

    cache = default_cache_root() / "speech-v1"
    cache.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips, total = [], 0.0
    while total < total_seconds:
        d = float(np.exp(rng.uniform(np.log(0.5), np.log(25.0))))
        d = min(d, max(0.5, total_seconds - total + 0.5))
        clips.append(speech_of_duration(d, int(rng.integers(0, 1000)), cache))
        total += d
    return clips


def load_reference(model: str, semantic: str, device: str):
    """The package's NeuCodec; local folders are served to its from_pretrained through an offline hub cache."""
    from gpu_executor.codec.neucodec_compat import import_neucodec
    from tests.fixtures.model import link_hub_repo, offline_hub

    neucodec = import_neucodec()
    if Path(model).is_dir() or Path(semantic).is_dir():
        cache = Path(tempfile.mkdtemp(prefix="bench-hub-"))
        link_hub_repo(cache, "neuphonic/neucodec", Path(model))
        link_hub_repo(cache, "facebook/w2v-bert-2.0", Path(semantic))
        with offline_hub(cache):
            codec = neucodec.NeuCodec.from_pretrained("neuphonic/neucodec")
    else:
        codec = neucodec.NeuCodec.from_pretrained(model)
    return codec.eval().to(device)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(args, model: str, semantic: str, clips: list[np.ndarray], audio_s: float, label: str,
             precision: str, options: dict, want_latents: bool):
    """Load the engine in one variant, warm it up, time ``encode`` over all clips (then, untimed, the latents)."""
    import torch

    from gpu_executor.encoder import NeucodecEncoder

    base_rss = rss_mib()
    t0 = time.perf_counter()
    enc = NeucodecEncoder.from_pretrained(model, semantic, device=args.device, precision=precision,
                                          batch_seconds=args.batch_seconds, **options)
    load_s = time.perf_counter() - t0
    loaded_rss = rss_mib()
    device = enc.device
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    # Warm-up: touches every (memory-mapped) weight. On a GPU it runs the whole set once, so kernel compilation
    # and per-shape algorithm choice stay out of the figure (a worker encodes shard after shard).
    enc.encode(clips if device.startswith("cuda") else [clips[0][:16000]])
    sync(device)
    warm_rss = rss_mib()
    t0 = time.perf_counter()
    ours = enc.encode(clips)
    sync(device)
    ours_s = time.perf_counter() - t0
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
    if enc.fused_activation and "fused" not in label:
        label += " (fused)"
    latents = enc.encode_latents(clips) if want_latents else None
    print(f"ours {label} on {device}: {ours_s:.1f} s ({audio_s / ours_s:.1f} audio s per s); load "
          f"{load_s:.1f} s; RSS before load {base_rss:.0f} MiB, after loading {loaded_rss:.0f} MiB, after the "
          f"warm-up {warm_rss:.0f} MiB (encoder resident: +{warm_rss - base_rss:.0f} MiB)"
          + (f"; GPU peak {gpu_peak:.0f} MiB" if gpu_peak else ""), flush=True)
    return f"ours {label}", ours_s, peak_rss_mib(), gpu_peak, ours, latents


FLAGS = {"fused": ("fused_activation", True), "unfused": ("fused_activation", False), "graphs": ("graphs", "cuda"),
         "buckets": ("graphs", "buckets"), "overlap": ("overlap_stream", True)}


def parse_variants(ap, spec: str) -> list[tuple[str, str, dict]]:
    """``fp32,bf16+graphs+overlap`` -> [(label, precision, engine options)]."""
    out = []
    for item in (p.strip() for p in spec.split(",")):
        precision, *flags = item.split("+")
        if precision not in ("fp32", "tf32", "bf16", "fp16") or any(f not in FLAGS for f in flags):
            ap.error(f"--precision {item!r}: fp32, tf32, bf16 or fp16, optionally with +{', +'.join(FLAGS)}")
        out.append((item, precision, dict(FLAGS[f] for f in flags)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=480.0, help="total audio (default 480 s, ~60 clips)")
    ap.add_argument("--precision", default="fp32",
                    help="fp32, tf32, bf16 or fp16, each optionally with +fused or +unfused (the CUDA activation "
                    "kernel; default: the engine's choice), +graphs (CUDA graphs per length bucket), +buckets (their "
                    "padding, eagerly), +overlap (second stream); several separated by commas (one reference pass "
                    "for all; a fast mode adds an fp32 pass of ours to compare with)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default=None, help="neucodec hub id or folder (default: the cached random model)")
    ap.add_argument("--semantic-model", default=None, help="w2v-bert hub id or folder")
    ap.add_argument("--batch-seconds", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-reference", action="store_true", help="time ours only (no agreement figure)")
    args = ap.parse_args()
    variants = parse_variants(ap, args.precision)
    fast = any(p != "fp32" or opts for _, p, opts in variants)
    if fast and not any(p == "fp32" and not opts for _, p, opts in variants):
        variants.insert(0, ("fp32", "fp32", {}))  # the fast modes are measured against our own fp32 pass

    import torch

    from gpu_executor.codec.random_model import cached_random_model
    from gpu_executor.encoder.engine import resolve_device
    from gpu_executor.encoder.tf32_switch import tf32_mode

    if args.model is None:
        dirs = cached_random_model()
        model, semantic = str(dirs.model_dir), str(dirs.semantic_model_dir)
    else:
        model, semantic = args.model, args.semantic_model or "facebook/w2v-bert-2.0"

    clips = make_clips(args.seconds, args.seed)
    audio_s = sum(len(c) for c in clips) / 16000
    print(f"{len(clips)} clips, {audio_s:.1f} s of audio ({min(map(len, clips)) / 16000:.2f}-"
          f"{max(map(len, clips)) / 16000:.2f} s); torch {torch.__version__}, threads {torch.get_num_threads()}")

    rows = []  # (name, wall seconds, peak RSS MiB, GPU peak MiB, codes, latents)
    failed = []
    device = str(resolve_device(args.device))
    for label, precision, options in variants:
        try:
            rows.append(run_ours(args, model, semantic, clips, audio_s, label, precision, options, fast))
        except Exception as exc:  # one failing variant must not hide the others' figures (the exit status says)
            print(f"ours {label}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append(label)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

    ref_s = refs = None
    if not args.skip_reference:
        ref = load_reference(model, semantic, device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode(), tf32_mode(torch.device(device), False):  # the exact reference
            ref.encode_code(torch.from_numpy(clips[0][:16000])[None, None].to(device))  # warm-up
            sync(device)
            t0 = time.perf_counter()
            refs = [ref.encode_code(torch.from_numpy(c)[None, None].to(device))[0, 0].cpu().numpy() for c in clips]
            sync(device)
            ref_s = time.perf_counter() - t0
        gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else 0.0
        rows.insert(0, ("package encode_code", ref_s, peak_rss_mib(), gpu_peak, refs, None))
        del ref

    cuda = device.startswith("cuda")
    print(f"\ndevice {device}" + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""))
    ours32 = next((r for r in rows if r[0] == "ours fp32"), None)
    print("\n| run | wall s | audio s / wall s | vs reference | token agreement | vs ours fp32: tokens | latent rel. "
          "error (all, worst clip) | peak RSS MiB (process, cumulative) |" + (" GPU peak MiB |" if cuda else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else ""))
    for name, wall, peak, gpu_peak, codes, latents in rows:
        ratio = f"{ref_s / wall:.2f}x" if ref_s else "-"
        agree = f"{agreement(codes, refs):.3f}%" if refs is not None else "-"
        vs32 = err = "-"
        if ours32 is not None and name != ours32[0] and name != "package encode_code":
            vs32 = f"{agreement(codes, ours32[4]):.3f}%"
            if latents is not None and ours32[5] is not None:
                total_err, worst = relative_error(latents, ours32[5])
                err = f"{total_err:.2e}, {worst:.2e}"
        print(f"| {name} | {wall:.1f} | {audio_s / wall:.2f} | {ratio} | {agree} | {vs32} | {err} | {peak:.0f} |"
              + (f" {gpu_peak:.0f} |" if cuda else ""))
    total = sum(len(r) for r in refs) if refs else 0
    if refs is not None:
        print(f"\ntoken agreement counted over {total} reference tokens "
              f"({np.unique(np.concatenate(refs)).size} distinct codes)")
    print("note: CPU timings on a shared machine are noisy; compare runs made close together.")
    if failed:
        print(f"FAILED variants: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
