"""Offline and streaming scoring over the ONNX bundle: batch (pandas/pyarrow or Spark) and Redis Streams."""
