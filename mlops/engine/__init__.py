"""The engine: compile a Recipe into a Plan of Steps, render it, run it as a Prefect flow."""
