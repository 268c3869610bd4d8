"""Production monitoring: drift, live metrics from ground truth, operational metrics, alerts, backtests."""
