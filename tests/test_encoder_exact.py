"""fp32 tokens of the batched engine equal the package's ``encode_code`` per clip, in any batch order."""

from __future__ import annotations

import numpy as np

from tests.fixtures.model import assert_diverse


def _compare(encoder, clips, reference, order, batch_seconds, min_fill, acoustic_per_clip):
    old = encoder.batch_seconds, encoder.min_batch_fill, encoder.acoustic_per_clip
    encoder.batch_seconds, encoder.min_batch_fill = batch_seconds, min_fill
    encoder.acoustic_per_clip = acoustic_per_clip
    picked = [clips[i] for i in order]
    try:
        ours = encoder.encode([c.wave for c in picked])
    finally:
        encoder.batch_seconds, encoder.min_batch_fill, encoder.acoustic_per_clip = old
    for clip, codes in zip(picked, ours):
        ref = reference[clip.clip_id]
        assert codes.dtype == np.uint16
        assert len(codes) == len(clip.wave) // 320 == len(ref), clip.clip_id
        mismatch = np.flatnonzero(codes != ref)
        assert mismatch.size == 0, (
            f"{clip.clip_id}: {mismatch.size} of {len(ref)} tokens differ (first at {mismatch[:5]})"
        )
    assert_diverse(ours)


def test_mixed_batch_matches_encode_code(random_encoder, speech_clips, speech_reference_codes):
    # The CPU defaults: 20 s budget, near-equal lengths batched (2.5 s with 2.56 s), the rest alone; the acoustic
    # encoder clip by clip.
    assert sum(len(c.wave) for c in speech_clips) / 16000 > 40
    _compare(random_encoder, speech_clips, speech_reference_codes, range(len(speech_clips)), 20.0, 0.85, True)


def test_other_batch_order_and_grouping_match(random_encoder, speech_clips, speech_reference_codes):
    # Shuffled order, any length mix allowed: ragged groups (6.2 s alone, 3.3 s + 2.56 s, 2.5 s + 1.6 s + 0.9 s),
    # with the acoustic encoder batched as on GPUs (zeroed / edge-replicated tails at every layer).
    order = list(np.random.default_rng(3).permutation(len(speech_clips)))
    short = [i for i in order if len(speech_clips[i].wave) < 10 * 16000]
    _compare(random_encoder, speech_clips, speech_reference_codes, short, 8.0, 0.0, False)
