"""Deployment targets: manifests (KServe, Dockerfile, prefect.yaml, alert rules), rollout and rollback."""

# The recipe schema imports this package's config, which imports the recipe package's Section: load the recipe
# package first so that importing mlops.deploy.* on its own never meets a half-initialised mlops.deploy.config.
import mlops.recipe  # noqa: F401
