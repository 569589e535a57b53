"""The `neucodec_tokens` feature: shard partitions and their discovery, the asset and its checks, the shard loop,
the per-shard metadata, prefetching and the decode round trip."""
