"""SFT dataset: pair neucodec tokens with transcripts, training ids, split, statistics, card, charts, packing."""
