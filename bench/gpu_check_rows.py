"""The device check's verdicts and its report: token and latent comparisons, result rows, the summary table.

Why apart from the driver: the rules that turn figures into PASS/FAIL are what a rare GPU run relies on, so they
are tested on their own, without a model, by feeding them wrong arrays (tests/test_gpu_check.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["PASS", "FAIL", "INFO", "NOT_HERE", "NOT_RUN", "Check", "Row", "Report", "agreement", "relative_error",
           "check_tokens", "check_latents", "check_diverse", "LATENT_BOUNDS"]

PASS, FAIL, INFO, NOT_HERE, NOT_RUN = "PASS", "FAIL", "info", "n/a here", "NOT RUN"

# Latent relative error (against our fp32) that a low precision must stay under. Sanity bounds, not targets: a
# broken path (wrong weights, garbage, a dropped cast) is off by about 1 (uncorrelated latents: about 1.4); the
# measured figure in the row is the answer.
LATENT_BOUNDS = {"tf32": 0.05, "fp16": 0.25, "bf16": 0.25}
# A token comparison proves nothing on codes that barely vary (a random model without the FSQ rescaling gives one
# code everywhere): the most common code may cover at most this share, and at least this many codes must occur.
MAX_COMMON_SHARE = 0.2
MIN_DISTINCT = 50


@dataclass(frozen=True)
class Check:
    ok: bool
    text: str


def agreement(codes: Sequence[np.ndarray], refs: Sequence[np.ndarray]) -> float:
    """Percent of reference tokens matched position by position (a clip of another length counts as different)."""
    total = sum(len(r) for r in refs)
    same = sum(int(np.sum(np.asarray(a, np.int64) == np.asarray(b, np.int64))) for a, b in zip(codes, refs)
               if len(a) == len(b))
    return same / max(1, total) * 100


def relative_error(values: Sequence[np.ndarray], refs: Sequence[np.ndarray]) -> tuple[float, float]:
    """Relative L2 error (of the pre-quantization latent, of decoded audio): over all clips, and the worst clip's."""
    num = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(values, refs))
    den = sum(float(np.sum(b.astype(np.float64) ** 2)) for b in refs)
    worst = max(float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b), 1e-30))
                for a, b in zip(values, refs))
    return (num / max(den, 1e-30)) ** 0.5, worst


def check_diverse(refs: Sequence[np.ndarray]) -> Check:
    flat = np.concatenate([np.asarray(r).ravel() for r in refs]) if refs else np.zeros(0, np.uint16)
    if flat.size == 0:
        return Check(False, "no tokens to compare")
    _, counts = np.unique(flat, return_counts=True)
    common = counts.max() / flat.size
    ok = common <= MAX_COMMON_SHARE and counts.size >= MIN_DISTINCT
    text = f"{counts.size} distinct codes, the most common {common:.1%}"
    return Check(ok, text if ok else f"{text}: codes too uniform for the comparison to prove anything")


def check_tokens(codes: Sequence[np.ndarray], refs: Sequence[np.ndarray], min_percent: float, against: str
                 ) -> Check:
    """``codes`` against ``refs`` clip by clip: same clip count, uint16, same lengths, diverse reference codes, and
    at least ``min_percent`` equal tokens (100: bit-exact)."""
    problems = []
    if len(codes) != len(refs):
        problems.append(f"{len(codes)} clips against {len(refs)}")
    bad_type = sum(np.asarray(a).dtype != np.uint16 for a in codes)
    if bad_type:
        problems.append(f"{bad_type} clips not uint16")
    bad_len = sum(len(a) != len(b) for a, b in zip(codes, refs))
    if bad_len:
        problems.append(f"{bad_len} clips of another length")
    diverse = check_diverse(refs)
    if not diverse.ok:
        problems.append(diverse.text)
    pct = agreement(codes, refs)
    total = sum(len(r) for r in refs)
    need = "bit-exact" if min_percent >= 100 else f"need >= {min_percent:g}%"
    text = f"{pct:.4f}% of {total:,} tokens equal to {against} ({need})"
    ok = not problems and pct >= min_percent
    return Check(ok, "; ".join([text, *problems]))


def check_latents(latents: Sequence[np.ndarray], refs: Sequence[np.ndarray], bound: float, against: str) -> Check:
    """Finite latents of the same shapes, relative error against ``refs`` at most ``bound``."""
    if len(latents) != len(refs) or any(a.shape != b.shape for a, b in zip(latents, refs)):
        return Check(False, f"latent shapes differ from {against}")
    if not all(np.isfinite(a).all() for a in latents):
        return Check(False, "latent holds NaN or infinite values")
    total, worst = relative_error(latents, refs)
    ok = total <= bound
    return Check(ok, f"latent rel. error vs {against} {total:.2e} (worst clip {worst:.2e}; bound {bound:g})")


@dataclass
class Row:
    """One result: what ran, the figures it gave, and its verdict."""

    name: str
    verdict: str
    checks: list[Check] = field(default_factory=list)
    rtf: float | None = None  # audio seconds per wall second
    vs_reference: float | None = None  # percent equal to encode_code
    vs_baseline: str = ""  # "100% vs fp32" and the like
    latent: float | None = None
    gpu_peak_mib: float | None = None
    busy: str = ""
    note: str = ""
    step_s: float | None = None  # wall time of the step that made the row

    @classmethod
    def judged(cls, name: str, checks: list[Check], **figures) -> "Row":
        return cls(name, PASS if all(c.ok for c in checks) else FAIL, checks, **figures)

    def line(self) -> str:
        """The one line printed the moment the row is known."""
        parts = [f"[{self.verdict}] {self.name}"]
        if self.rtf is not None:
            parts.append(f"{self.rtf:.1f}x real time")
        parts += [("" if c.ok else "FAILED: ") + c.text for c in self.checks]
        if self.gpu_peak_mib:
            parts.append(f"GPU peak {self.gpu_peak_mib:.0f} MiB")
        if self.busy:
            parts.append(f"GPU busy {self.busy}")
        if self.note:
            parts.append(self.note)
        if self.step_s is not None:
            parts.append(f"step {self.step_s:.1f} s")
        return " | ".join(parts)

    def cells(self) -> list[str]:
        def num(x, fmt):
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

        return [self.name, num(self.rtf, ".1f"), "-" if self.vs_reference is None else f"{self.vs_reference:.3f}%",
                self.vs_baseline or "-", num(self.latent, ".2e"), num(self.gpu_peak_mib, ".0f"), self.busy or "-",
                f"**{self.verdict}**" if self.verdict == FAIL else self.verdict]


class Report:
    """Rows as they come: printed at once and appended to ``out/gpu_check_rows.jsonl`` (a run stopped at its time
    limit keeps what it finished); ``finish`` writes and prints the summary table."""

    # GPU peak: the timed call's peak allocation above what was allocated before it (the models); busy: NVML's
    # share of time a kernel ran, sampled during the timed call.
    HEADER = ["row", "audio s / wall s", "equal to encode_code", "vs its baseline", "latent rel. error",
              "GPU peak MiB (call)", "GPU busy", "verdict"]

    def __init__(self, out_dir: Path, printer=print) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.rows: list[Row] = []
        self._print = printer
        self._jsonl = self.out_dir / "gpu_check_rows.jsonl"
        self._jsonl.write_text("")

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self._print(row.line(), flush=True)
        record = {k: v for k, v in row.__dict__.items() if k != "checks"}
        record["checks"] = [{"ok": c.ok, "text": c.text} for c in row.checks]
        with self._jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")
        return row

    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.verdict in (FAIL, NOT_RUN)]

    def table(self) -> str:
        lines = ["| " + " | ".join(self.HEADER) + " |", "|---|" + "---:|" * (len(self.HEADER) - 2) + "---|"]
        lines += ["| " + " | ".join(r.cells()) + " |" for r in self.rows]
        notes = [f"- {r.name}: " + "; ".join([c.text for c in r.checks] + ([r.note] if r.note else [])
                                             + ([f"step {r.step_s:.1f} s"] if r.step_s is not None else []))
                 for r in self.rows if r.checks or r.note]
        return "\n".join(lines + ["", *notes])

    def finish(self, header: str = "") -> int:
        """Print and write the summary; the exit status: 0 when nothing failed or was left out, else 1."""
        failed = self.failed()
        verdict = ("ALL PASSED" if not failed else
                   f"{len(failed)} FAILED OR NOT RUN: " + ", ".join(r.name for r in failed))
        text = "\n".join(x for x in (header, self.table(), "", f"verdict: {verdict}") if x is not None)
        (self.out_dir / "gpu_check_summary.md").write_text(text + "\n")
        self._print("\n" + text, flush=True)
        return 1 if failed else 0
