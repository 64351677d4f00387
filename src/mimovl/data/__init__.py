"""Data: the sample schema, shard writing and streaming, synthetic data, processing and packing."""
