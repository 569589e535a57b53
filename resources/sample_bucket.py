"""Sample shards of real synthesized speech (espeak-ng) in the input contract of DESIGN.md.

Every test and the demo use these shards. Each segment speaks one or two of the short sentences below in the
shard's language, by one of a few speakers (espeak-ng voice variant, pitch and speed), and its transcript is
exactly what was spoken. Files are a mix of 16 kHz mono and 44.1/48 kHz stereo FLAC; a given seed always writes
the same shards.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import soundfile as sf
import soxr

from resources.bucket import AUDIO_TAR, METADATA_PARQUET, Bucket, open_bucket

LANGUAGES = ("en", "hi", "te", "ml", "ta", "pa", "gu", "bn", "kn", "mr", "or", "as")
DATASETS = ("espeak_read", "espeak_chat")
ESPEAK_VOICES = {"en": "en-us"}  # the rest use the language code as the espeak-ng voice
VARIANTS = ("m1", "f2", "m3", "f4")
# (sample rate, channels, FLAC subtype): the mix of the production corpus
FORMATS = ((16_000, 1, "PCM_16"), (44_100, 2, "PCM_16"), (48_000, 2, "PCM_24"))
MAX_SEGMENT_SECONDS = 6.0

SENTENCES: dict[str, tuple[str, ...]] = {
    "en": ("The weather is pleasant today.", "Please close the door quietly.",
           "She reads a book every evening.", "We will meet at the station tomorrow."),
    "hi": ("आज मौसम बहुत अच्छा है।", "कृपया दरवाज़ा बंद कर दीजिए।",
           "वह हर शाम किताब पढ़ती है।", "हम कल स्टेशन पर मिलेंगे।"),
    "te": ("ఈ రోజు వాతావరణం బాగుంది.", "దయచేసి తలుపు మూసివేయండి.",
           "ఆమె ప్రతి సాయంత్రం పుస్తకం చదువుతుంది.", "మనం రేపు స్టేషన్‌లో కలుద్దాం."),
    "ml": ("ഇന്ന് കാലാവസ്ഥ നല്ലതാണ്.", "ദയവായി വാതിൽ അടയ്ക്കുക.",
           "അവൾ എല്ലാ വൈകുന്നേരവും പുസ്തകം വായിക്കുന്നു.", "നമുക്ക് നാളെ സ്റ്റേഷനിൽ കാണാം."),
    "ta": ("இன்று வானிலை நன்றாக உள்ளது.", "தயவுசெய்து கதவை மூடுங்கள்.",
           "அவள் ஒவ்வொரு மாலையும் புத்தகம் படிக்கிறாள்.", "நாம் நாளை நிலையத்தில் சந்திப்போம்."),
    "pa": ("ਅੱਜ ਮੌਸਮ ਬਹੁਤ ਵਧੀਆ ਹੈ।", "ਕਿਰਪਾ ਕਰਕੇ ਦਰਵਾਜ਼ਾ ਬੰਦ ਕਰੋ।",
           "ਉਹ ਹਰ ਸ਼ਾਮ ਕਿਤਾਬ ਪੜ੍ਹਦੀ ਹੈ।", "ਅਸੀਂ ਕੱਲ੍ਹ ਸਟੇਸ਼ਨ ਤੇ ਮਿਲਾਂਗੇ।"),
    "gu": ("આજે હવામાન ખૂબ સરસ છે.", "કૃપા કરીને દરવાજો બંધ કરો.",
           "તે દરરોજ સાંજે પુસ્તક વાંચે છે.", "આપણે કાલે સ્ટેશન પર મળીશું."),
    "bn": ("আজ আবহাওয়া খুব ভালো।", "দয়া করে দরজাটা বন্ধ করুন।",
           "সে প্রতিদিন সন্ধ্যায় বই পড়ে।", "আমরা কাল স্টেশনে দেখা করব।"),
    "kn": ("ಇಂದು ಹವಾಮಾನ ಚೆನ್ನಾಗಿದೆ.", "ದಯವಿಟ್ಟು ಬಾಗಿಲು ಮುಚ್ಚಿ.",
           "ಅವಳು ಪ್ರತಿದಿನ ಸಂಜೆ ಪುಸ್ತಕ ಓದುತ್ತಾಳೆ.", "ನಾವು ನಾಳೆ ನಿಲ್ದಾಣದಲ್ಲಿ ಭೇಟಿಯಾಗೋಣ."),
    "mr": ("आज हवामान खूप छान आहे.", "कृपया दार बंद करा.",
           "ती दररोज संध्याकाळी पुस्तक वाचते.", "आपण उद्या स्टेशनवर भेटू."),
    "or": ("ଆଜି ପାଗ ବହୁତ ଭଲ ଅଛି।", "ଦୟାକରି କବାଟ ବନ୍ଦ କରନ୍ତୁ।",
           "ସେ ପ୍ରତିଦିନ ସନ୍ଧ୍ୟାରେ ବହି ପଢ଼େ।", "ଆମେ କାଲି ଷ୍ଟେସନରେ ଦେଖା କରିବା।"),
    "as": ("আজি বতৰ বৰ ভাল।", "অনুগ্ৰহ কৰি দুৱাৰখন বন্ধ কৰক।",
           "তাই প্ৰতিদিনে সন্ধিয়া কিতাপ পঢ়ে।", "আমি কাইলৈ ষ্টেচনত লগ পাম।"),
}


@dataclass(frozen=True)
class SampleSegment:
    segment_id: str
    member: str
    text: str
    speaker: str
    duration: float
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class SampleShard:
    prefix: str
    dataset: str
    language: str
    segments: tuple[SampleSegment, ...]

    @property
    def segment_count(self) -> int:
        return len(self.segments)

    @property
    def audio_seconds(self) -> float:
        return sum(s.duration for s in self.segments)

    @property
    def segment_ids(self) -> list[str]:
        return [s.segment_id for s in self.segments]


@dataclass
class SampleBucketReport:
    url: str
    shards: list[SampleShard] = field(default_factory=list)


@dataclass(frozen=True)
class _Speaker:
    speaker_id: str
    variant: str
    pitch: int
    speed: int


def espeak(text: str, language: str, variant: str = "m1", pitch: int = 50, speed: int = 165) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng; returns float32 mono samples and the sample rate (22050 Hz)."""
    voice = ESPEAK_VOICES.get(language, language)
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng (the sample bucket needs it)")
    proc = subprocess.run(
        ["espeak-ng", "-v", f"{voice}+{variant}", "-p", str(pitch), "-s", str(speed), "--stdout", text],
        capture_output=True, check=False, timeout=60,
    )
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for {language!r}: {proc.stderr.decode(errors='replace').strip()}")
    samples, sr = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    return samples, sr


def _speakers(language: str, rng: np.random.Generator) -> list[_Speaker]:
    return [
        _Speaker(f"{language}_spk{n:02d}", VARIANTS[n % len(VARIANTS)],
                 int(rng.integers(35, 70)), int(rng.integers(145, 185)))
        for n in range(3)
    ]


def flac_bytes(samples: np.ndarray, sr: int, channels: int, subtype: str) -> tuple[bytes, float]:
    """Resample the 22.05 kHz speech to ``sr`` and encode it as FLAC with ``channels`` channels."""
    x = soxr.resample(samples, 22_050, sr, quality="HQ").astype(np.float32)
    x = np.clip(x * 0.9, -1.0, 1.0)
    if channels == 2:  # a slightly unbalanced stereo image, so the channel mean is not a copy of one channel
        x = np.stack([x, 0.8 * x], axis=1)
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="FLAC", subtype=subtype)
    return buf.getvalue(), x.shape[0] / sr


def build_shard(index: int, dataset: str, language: str, segments: int, seed: int, workdir: Path) -> SampleShard:
    """Write ``audio.tar`` and ``metadata.parquet`` of one shard into ``workdir``."""
    rng = np.random.default_rng([seed, index])
    speakers = _speakers(language, rng)
    sentences = SENTENCES[language]
    prefix = f"{dataset}/{language}/shard_{index:06d}"
    out: list[SampleSegment] = []
    tar_path = workdir / AUDIO_TAR
    speaker_offset = int(rng.integers(len(speakers)))
    sentence_order = rng.permutation(len(sentences))
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for k in range(segments):
            spk = speakers[(speaker_offset + k) % len(speakers)]
            first = int(sentence_order[k % len(sentences)])
            chosen = [sentences[first]]
            if rng.random() < 0.3:
                chosen.append(sentences[(first + 1) % len(sentences)])
            sr, channels, subtype = FORMATS[int(rng.integers(len(FORMATS)))]
            samples, src_sr = espeak(" ".join(chosen), language, spk.variant, spk.pitch, spk.speed)
            if len(samples) / src_sr > MAX_SEGMENT_SECONDS and len(chosen) > 1:
                chosen = chosen[:1]
                samples, src_sr = espeak(chosen[0], language, spk.variant, spk.pitch, spk.speed)
            samples = samples[: int(MAX_SEGMENT_SECONDS * src_sr)]
            data, duration = flac_bytes(samples, sr, channels, subtype)
            segment_id = f"{spk.speaker_id}_{index:06d}_{k:04d}"
            member = f"{spk.speaker_id}/{segment_id}.flac" if k % 2 else f"{segment_id}.flac"
            info = tarfile.TarInfo(member)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
            out.append(SampleSegment(segment_id, member, " ".join(chosen), spk.speaker_id, round(duration, 6),
                                     sr, channels))
    pl.DataFrame({
        "segment_id": [s.segment_id for s in out],
        "text": [s.text for s in out],
        "language": [language] * len(out),
        "speaker": [s.speaker for s in out],
        "duration": [s.duration for s in out],
        "dataset": [dataset] * len(out),
    }).write_parquet(workdir / METADATA_PARQUET, compression="zstd")
    return SampleShard(prefix, dataset, language, tuple(out))


def write_sample_bucket(dest: str | Bucket | None = None, *, shards: int = 3, languages: list[str] | None = None,
                        seed: int = 0, segments_per_shard: int = 6, first_index: int = 0) -> SampleBucketReport:
    """Write ``shards`` sample shards into ``dest`` (folder, ``file://`` or ``s3://`` URL, or an open Bucket).

    Shard ``i`` speaks ``languages[i % len(languages)]`` (default: the 12 corpus languages in order) and belongs
    to dataset ``DATASETS[i % 2]``; its prefix is ``{dataset}/{language}/shard_{i:06d}``.
    """
    langs = list(languages) if languages else list(LANGUAGES)
    unknown = [lang for lang in langs if lang not in SENTENCES]
    if unknown:
        raise ValueError(f"no sample sentences for {unknown}; choose from {', '.join(LANGUAGES)}")
    if shards < 0 or segments_per_shard < 1:
        raise ValueError("shards must be >= 0 and segments per shard >= 1")
    bucket = dest if isinstance(dest, Bucket) else open_bucket(dest)
    report = SampleBucketReport(bucket.url)
    for i in range(first_index, first_index + shards):
        language = langs[i % len(langs)]
        dataset = DATASETS[i % len(DATASETS)]
        with tempfile.TemporaryDirectory(prefix="sample-shard-") as tmp:
            shard = build_shard(i, dataset, language, segments_per_shard, seed, Path(tmp))
            bucket.upload_file(Path(tmp) / AUDIO_TAR, f"{shard.prefix}/{AUDIO_TAR}")
            bucket.upload_file(Path(tmp) / METADATA_PARQUET, f"{shard.prefix}/{METADATA_PARQUET}")
        report.shards.append(shard)
    return report
