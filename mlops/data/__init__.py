"""Data: sources, content fingerprints, schema inference, deterministic splits, preprocessing."""
