"""Production monitoring: drift, live metrics from ground truth, operational metrics, alerts, backtests."""

# The recipe schema imports this package's config module. Loading the recipe package first means importing
# any monitor module on its own (e.g. mlops.monitor.run from a Prefect flow) cannot hit that cycle half-way.
import mlops.recipe  # noqa: F401
