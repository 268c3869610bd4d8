"""Sweeps: Optuna studies over recipe keys, durable and resumable; trials as Prefect tasks."""
