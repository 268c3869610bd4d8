"""Packaging: the ONNX graph of the whole inference path, parity check, the bundle, the registry."""
