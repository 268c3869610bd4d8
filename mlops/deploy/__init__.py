"""Deployment targets: manifests (KServe, Dockerfile, prefect.yaml, alert rules), rollout and rollback."""
