"""Continuous improvement: triggers, retraining, champion/challenger decisions, A/B readout, error analysis."""

# The recipe schema imports this package's config, which imports the recipe package's Section: load the recipe
# package first so that importing mlops.improve.* on its own never meets a half-initialised mlops.improve.config.
import mlops.recipe  # noqa: F401
