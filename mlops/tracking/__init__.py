"""MLflow tracking: the store to use, what every run records, and the environment lock."""
