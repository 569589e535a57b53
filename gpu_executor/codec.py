"""neucodec's fixed audio contract, the one source for every layer: 16 kHz mono in, one token per 320 samples."""

SAMPLE_RATE = 16_000
SAMPLES_PER_TOKEN = 320
TOKENS_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_TOKEN
