"""Collecting predictions that reach the log from elsewhere: a Redis stream that servers write (`mlops collect`)
and KServe's payload logger (CloudEvents over HTTP, `mlops collect --http`), both landed in the prediction log's
store (SQLite or PostgreSQL) that every reader reads."""
