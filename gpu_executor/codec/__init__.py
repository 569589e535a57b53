"""The neucodec model around the encoder (torch, no Dagster): its decoder (``decoder``), round-trip quality figures
(``quality``), the random full-size test model (``random_model``) and ``import neucodec`` without torchaudio
(``neucodec_compat``). This module itself holds neucodec's fixed audio contract, the one source for every layer:
16 kHz mono in, one token per 320 samples."""

SAMPLE_RATE = 16_000
SAMPLES_PER_TOKEN = 320
TOKENS_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_TOKEN
