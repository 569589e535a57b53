"""The device check (bench/gpu_check.py) fails loudly: its verdicts turn a wrong token array, a wrong length, codes
that do not vary or a broken latent into FAIL and a non-zero exit status; on a CPU its CPU steps run and pass for
real; stopped at its time limit, it still reports what it finished and what it left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.gpu_check_rows import (
    FAIL,
    NOT_HERE,
    NOT_RUN,
    PASS,
    Check,
    Report,
    Row,
    check_latents,
    check_tokens,
)

ROOT = Path(__file__).resolve().parents[1]


def _codes(seed: int = 0, lengths=(12_000, 5_000, 3_000)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 65536, n).astype(np.uint16) for n in lengths]


def test_token_verdicts_fail_on_wrong_tokens():
    refs = _codes()  # 20,000 diverse tokens
    assert check_tokens([r.copy() for r in refs], refs, 100.0, "encode_code").ok
    one_off = [r.copy() for r in refs]
    one_off[1][7] ^= 1
    assert check_tokens(one_off, refs, 99.99, "encode_code").ok  # 99.995%: inside the CUDA tolerance
    exact = check_tokens(one_off, refs, 100.0, "fp32")
    assert not exact.ok and "99.9950% of 20,000 tokens equal to fp32 (bit-exact)" in exact.text
    three_off = [r.copy() for r in one_off]
    three_off[0][:2] ^= 1
    assert not check_tokens(three_off, refs, 99.99, "encode_code").ok  # 99.985%

    shorter = [r.copy() for r in refs]
    shorter[2] = shorter[2][:-1]  # one token missing at the end: the rest still matches
    verdict = check_tokens(shorter, refs, 99.0, "encode_code")
    assert not verdict.ok and "1 clips of another length" in verdict.text
    assert not check_tokens([r.astype(np.int64) for r in refs], refs, 99.0, "encode_code").ok
    assert not check_tokens(refs[:2], refs, 50.0, "encode_code").ok  # a clip left out

    constant = [np.full(n, 43690, np.uint16) for n in (500, 300)]  # what an unscaled random model gives
    verdict = check_tokens([c.copy() for c in constant], constant, 100.0, "encode_code")
    assert not verdict.ok and "codes too uniform" in verdict.text


def test_latent_verdicts_fail_on_broken_latents():
    rng = np.random.default_rng(1)
    base = [rng.standard_normal((n, 16)).astype(np.float32) for n in (40, 25)]
    near = [b + 0.01 * rng.standard_normal(b.shape).astype(np.float32) for b in base]
    assert check_latents(near, base, 0.05, "fp32").ok
    assert not check_latents([1.5 * b for b in base], base, 0.25, "fp32").ok  # off by 0.5
    with_nan = [b.copy() for b in base]
    with_nan[1][3, 2] = np.nan
    verdict = check_latents(with_nan, base, 0.25, "fp32")
    assert not verdict.ok and "NaN" in verdict.text
    assert not check_latents([base[0], base[1][:-1]], base, 0.25, "fp32").ok


def test_report_prints_each_row_at_once_and_a_failure_fails_the_exit_status(tmp_path):
    printed: list[str] = []

    def printer(text, flush=False):
        printed.append(text)

    refs = _codes()
    wrong = [r.copy() for r in refs]
    wrong[0][::10] ^= 1  # a deliberately wrong token array
    report = Report(tmp_path, printer)
    report.add(Row.judged("fp32", [check_tokens([r.copy() for r in refs], refs, 99.99, "encode_code")], rtf=140.0))
    report.add(Row.judged("fp32+overlap", [check_tokens(wrong, refs, 100.0, "fp32")], rtf=150.0))
    report.add(Row("cuda:1 fp32", NOT_HERE, note="the machine has 1 GPU(s)"))
    assert [line.split("]")[0] for line in printed] == ["[PASS", "[FAIL", "[n/a here"]
    assert "FAILED: 94.0000% of 20,000 tokens equal to fp32 (bit-exact)" in printed[1]
    rows = [json.loads(line) for line in (tmp_path / "gpu_check_rows.jsonl").read_text().splitlines()]
    assert [r["verdict"] for r in rows] == [PASS, FAIL, NOT_HERE]
    assert report.finish("header") == 1
    summary = (tmp_path / "gpu_check_summary.md").read_text()
    assert "| fp32+overlap | 150.0 |" in summary and "**FAIL**" in summary
    assert "verdict: 1 FAILED OR NOT RUN: fp32+overlap" in summary

    passing = Report(tmp_path / "ok", printer)
    passing.add(Row.judged("fp32", [Check(True, "fine")]))
    passing.add(Row("tf32", NOT_HERE, note="CUDA only"))
    assert passing.finish() == 0
    left = Report(tmp_path / "left", printer)
    left.add(Row("bf16", NOT_RUN, note="stopped by SIGTERM"))
    assert left.finish() == 1


def _driver(out: Path, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--seconds", "1.5",
            "--out", str(out), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}


def test_driver_runs_its_cpu_steps(tmp_path):
    """fp32 and the bucket padding against encode_code, bit-exact on a CPU; the CUDA rows say they cannot run."""
    proc = subprocess.run(_driver(tmp_path, "--steps", "fp32,buckets,overlap,graphs"), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = {r["name"]: r for r in map(json.loads, (tmp_path / "gpu_check_rows.jsonl").read_text().splitlines())}
    for name in ("fp32", "fp32+buckets"):
        assert rows[name]["verdict"] == PASS, rows[name]
        assert rows[name]["vs_reference"] == 100.0
        assert "bit-exact" in rows[name]["checks"][0]["text"]
    assert rows["fp32+overlap"]["verdict"] == rows["fp32+graphs"]["verdict"] == NOT_HERE
    # Rows are printed as they finish, before the summary table.
    out = proc.stdout
    assert out.index("[PASS] fp32 |") < out.index("[PASS] fp32+buckets |") < out.index("| row |")
    assert "verdict: ALL PASSED" in (tmp_path / "gpu_check_summary.md").read_text()


def test_driver_stopped_at_its_time_limit_reports_what_it_left(tmp_path):
    proc = subprocess.Popen(_driver(tmp_path, "--steps", "fp32"), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        lines = []
        for line in proc.stdout:  # the signal comes when the driver is known to be in its steps, not after a delay
            lines.append(line)
            if line.startswith("[info] environment"):
                proc.send_signal(signal.SIGTERM)
                break
        lines += proc.stdout.readlines()
        assert proc.wait(timeout=300) == 1
    finally:
        proc.kill()
    rows = [json.loads(r) for r in (tmp_path / "gpu_check_rows.jsonl").read_text().splitlines()]
    assert rows[0]["name"] == "environment"
    assert [r["name"] for r in rows if r["verdict"] == NOT_RUN] == ["caches", "reference", "fp32"]
    assert all("stopped by SIGTERM" in r["note"] for r in rows[1:])
    assert "FAILED OR NOT RUN: caches, reference, fp32" in "".join(lines)
