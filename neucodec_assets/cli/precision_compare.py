"""``neucodec-platform compare-precision``: fp32 against a faster precision on a sample of the user's own shard.

The seeded sample of the round trip (``roundtrip.sample_ids``) is read from the shard, encoded in fp32 and in the
faster precision (bf16, fp16 or tf32) with the configured model and device, and both code sets are decoded with the
package's decoder and scored against the source at 16 kHz. Reported: token agreement with fp32 (share of equal
codes) and STOI / wide-band PESQ / SI-SDR / log-mel distance side by side, so a user can decide whether the faster
precision is good enough for their corpus before a fleet run.

On a CPU the engine refuses bf16/fp16 without native support and tf32 always (``check_cpu_precision``): then the
fp32 column is printed with a note saying why and where the comparison runs (a CUDA device).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from gpu_executor.codec import SAMPLE_RATE
from neucodec_assets.tokens.roundtrip import (
    RANDOM_NOTE,
    decode_and_score,
    decoder_for,
    sample_ids,
)

__all__ = ["PrecisionColumn", "PrecisionComparison", "compare_precision", "read_sample"]


@dataclass
class PrecisionColumn:
    precision: str
    figures: dict[str, float | None]
    token_agreement: float | None  # share of codes equal to fp32's (None for fp32 itself)
    encode_seconds: float
    per_segment_agreement: dict[str, float] = field(default_factory=dict)


@dataclass
class PrecisionComparison:
    prefix: str
    device: str
    model: str
    random_weights: bool
    segment_ids: list[str]
    audio_seconds: float
    columns: list[PrecisionColumn]
    requested: str
    note: str | None = None  # why the faster column is missing, when it is

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def table(self) -> str:
        head = f"{'precision':<10} {'tokens = fp32':>13} {'STOI':>7} {'PESQ-WB':>8} {'SI-SDR dB':>10} " \
               f"{'log-mel dist':>13} {'encode s':>9}"
        lines = [head, "-" * len(head)]
        for c in self.columns:
            agree = "reference" if c.token_agreement is None else f"{100 * c.token_agreement:.3f}%"

            def f(name, fmt):
                v = c.figures.get(name)
                return "n/a" if v is None else format(v, fmt)

            lines.append(f"{c.precision:<10} {agree:>13} {f('stoi', '.4f'):>7} {f('pesq', '.3f'):>8} "
                         f"{f('si_sdr', '.2f'):>10} {f('mel_distance', '.4f'):>13} {c.encode_seconds:>9.2f}")
        return "\n".join(lines)

    def text(self) -> str:
        out = [f"shard {self.prefix}: {len(self.segment_ids)} sampled segments, {self.audio_seconds:.1f} s of audio; "
               f"model {self.model} on {self.device}", self.table(),
               "higher is better: tokens, STOI (0..1), PESQ-WB (1.04..4.64), SI-SDR; lower is better: log-mel distance"]
        if self.random_weights:
            out.append(f"note: {RANDOM_NOTE}")
        if self.note:
            out.append(f"note: {self.note}")
        return "\n".join(out)


def read_sample(bucket, prefix: str, samples: int, *, workers: int = 2) -> list[tuple[str, np.ndarray]]:
    """(id, 16 kHz wave) of the shard's seeded sample, through the shard reader (stops once all are read)."""
    from resources.shard_reader import read_shard

    with read_shard(bucket, prefix, workers=workers) as reader:
        wanted = set(sample_ids(reader.segment_ids, samples, prefix))
        got: dict[str, np.ndarray] = {}
        for segment in reader.segments():
            if segment.segment_id in wanted:
                got[segment.segment_id] = segment.wave
                if len(got) == len(wanted):
                    break
    return [(sid, got[sid]) for sid in sorted(got)]


def _column(loaded, waves: list[tuple[str, np.ndarray]], reference: list[np.ndarray] | None
            ) -> tuple[PrecisionColumn, list[np.ndarray]]:
    from gpu_executor.codec.quality import mean_figures

    start = time.perf_counter()
    codes = list(loaded.encoder.encode([w for _, w in waves], [s for s, _ in waves]))
    seconds = time.perf_counter() - start
    pairs = decode_and_score(decoder_for(loaded), [(s, w, c) for (s, w), c in zip(waves, codes) if len(c)])
    agreement, per_segment = None, {}
    if reference is not None:
        equal = total = 0
        for (sid, _), ref, c in zip(waves, reference, codes):
            n = min(len(ref), len(c))
            same = int(np.sum(ref[:n] == c[:n]))
            per_segment[sid] = same / max(1, max(len(ref), len(c)))
            equal += same
            total += max(len(ref), len(c))
        agreement = equal / max(1, total)
    column = PrecisionColumn(loaded.settings.precision, mean_figures([p.figures for p in pairs]), agreement,
                             seconds, per_segment)
    return column, codes


def compare_precision(bucket, prefix: str, *, samples: int = 4, precision: str = "bf16", settings=None,
                      log=print) -> PrecisionComparison:
    """Encode the sample in fp32 and in ``precision``, decode both, score both. ``settings``: an EncoderSettings
    (default: from the NEUCODEC_* environment); its precision is replaced by fp32 and by ``precision``."""
    from gpu_executor.encoder import PRECISIONS
    from gpu_executor.encoder.engine import resolve_device
    from gpu_executor.encoder.precision import check_cpu_precision
    from resources.dagster_resources import EncoderResource, load_encoder

    if precision == "fp32" or precision not in PRECISIONS:
        raise ValueError(f"compare fp32 with one of {sorted(p for p in PRECISIONS if p != 'fp32')}, not {precision!r}")
    base = settings if settings is not None else EncoderResource().settings()
    device = resolve_device(base.device)
    note = None
    if device.type == "cpu":
        try:
            check_cpu_precision(precision)
        except ValueError as exc:
            note = (f"{precision} refused on this machine's CPU: {exc} Only the fp32 column is shown. Run the same "
                    f"command on a CUDA machine (NEUCODEC_DEVICE=cuda) to compare fp32 with bf16, fp16 or tf32.")
    waves = read_sample(bucket, prefix, samples)
    if not waves:
        raise ValueError(f"shard {prefix}: no segment could be read for the sample")
    log(f"{prefix}: encoding {len(waves)} segments in fp32 on {device}")
    fp32 = load_encoder(dataclasses.replace(base, precision="fp32"))
    ref_column, ref_codes = _column(fp32, waves, None)
    columns = [ref_column]
    if note is None:
        log(f"{prefix}: encoding {len(waves)} segments in {precision} on {device}")
        fast = load_encoder(dataclasses.replace(base, precision=precision))
        columns.append(_column(fast, waves, ref_codes)[0])
    random_weights = base.is_random or str(fp32.provenance.get("random_weights", "")).lower() == "true"
    return PrecisionComparison(
        prefix=prefix, device=fp32.device, model=fp32.model_label, random_weights=random_weights,
        segment_ids=[s for s, _ in waves], audio_seconds=sum(len(w) for _, w in waves) / SAMPLE_RATE,
        columns=columns, requested=precision, note=note,
    )
