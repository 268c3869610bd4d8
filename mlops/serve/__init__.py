"""Serving: one ONNX Runtime predictor behind KServe's V1/V2 protocols, with a durable prediction log.
Nothing here imports torch, lightning, mlflow (except to resolve NAME@ALIAS), prefect or evidently."""
