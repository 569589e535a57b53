"""The CUDA activation kernel, run by Triton's CPU interpreter, against the package's own modules.

Triton picks the interpreter when a kernel is decorated, so the checks run in a fresh process with
``TRITON_INTERPRET=1``; the interpreter is slow, so the inputs are small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _checks() -> dict:
    import torch

    from gpu_executor.codec.neucodec_compat import import_neucodec
    from gpu_executor.encoder.acoustic import BatchedCodecEnc
    from gpu_executor.encoder.fused_activation import (
        fused_activation_available,
        fused_snake_activation,
    )

    import_neucodec()
    from neucodec.activations import SnakeBeta
    from neucodec.alias_free_torch.act import Activation1d
    from neucodec.codec_encoder import CodecEncoder

    torch.manual_seed(0)
    out: dict = {"available": fused_activation_available(torch.device("cpu"))}

    # One activation, a ragged batch including 1- and 2-sample clips (every index clamp is exercised).
    act = Activation1d(activation=SnakeBeta(3, alpha_logscale=True)).eval()
    with torch.no_grad():
        act.act.alpha.normal_(0, 0.5)
        act.act.beta.normal_(0, 0.5)
    alpha, beta = torch.exp(act.act.alpha), torch.exp(act.act.beta)
    lengths = [1, 2, 7, 40]
    x = torch.randn(len(lengths), 3, max(lengths))
    y = fused_snake_activation(x, torch.tensor(lengths), alpha, 1.0 / (beta + act.act.no_div_by_zero),
                               act.upsample.filter.flatten() * 2, act.downsample.lowpass.filter.flatten())
    with torch.no_grad():
        refs = [act(x[i : i + 1, :, :n]) for i, n in enumerate(lengths)]
    out["activation_max_err"] = max(float((y[i : i + 1, :, :n] - r).abs().max()) for i, (n, r)
                                    in enumerate(zip(lengths, refs)))
    out["activation_scale"] = max(float(r.abs().max()) for r in refs)
    # bf16 in and out (the bf16/fp16 engine path): loaded to fp32, computed in fp32, rounded once on the store.
    y16 = fused_snake_activation(x.bfloat16(), torch.tensor(lengths), alpha, 1.0 / (beta + act.act.no_div_by_zero),
                                 act.upsample.filter.flatten() * 2, act.downsample.lowpass.filter.flatten())
    with torch.no_grad():
        refs16 = [act(x[i : i + 1, :, :n].bfloat16().float()) for i, n in enumerate(lengths)]
    out["bf16_dtype"] = str(y16.dtype)
    out["bf16_max_rel_err"] = max(float(((y16[i : i + 1, :, :n].float() - r).abs() / r.abs().clamp_min(1e-2)).max())
                                  for i, (n, r) in enumerate(zip(lengths, refs16)))

    # A small CodecEnc of the same structure: the batched encoder with the kernel against the package per clip.
    enc = CodecEncoder(ngf=4, up_ratios=[2, 2], hidden_dim=8).eval()
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.normal_(0, 0.3)
    clips = [torch.randn(1, 1, n) for n in (8, 20, 12)]  # lengths divisible by the hop of 4
    batch = torch.zeros(len(clips), 1, 20)
    for i, c in enumerate(clips):
        batch[i, :, : c.shape[-1]] = c
    with torch.no_grad():
        emb, frames = BatchedCodecEnc(enc, fused=True)(batch, [c.shape[-1] for c in clips])
        refs = [enc(c) for c in clips]
    out["codec_frames"] = frames
    out["codec_max_err"] = max(float((emb[i, : r.shape[1]] - r[0]).abs().max()) for i, r in enumerate(refs))
    out["codec_scale"] = max(float(r.abs().max()) for r in refs)
    return out


def test_fused_activation_matches_the_package_modules():
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["available"] is True, "no Triton: it is a test dependency on Linux x86-64 (pyproject.toml)"
    # Same function, sums in another order: float32 rounding differences only.
    assert result["activation_scale"] > 0.1 and result["activation_max_err"] < 1e-5 * result["activation_scale"]
    # bf16 output: one rounding of the fp32 result to 8 significant bits, within one unit in the last place (the
    # interpreter may truncate where the GPU rounds to nearest).
    assert result["bf16_dtype"] == "torch.bfloat16" and result["bf16_max_rel_err"] < 2**-7
    assert result["codec_frames"] == [2, 5, 3]
    assert result["codec_scale"] > 0.01 and result["codec_max_err"] < 1e-4 * result["codec_scale"]


if __name__ == "__main__":
    print(json.dumps(_checks()))
