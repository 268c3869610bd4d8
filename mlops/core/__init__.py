"""The bottom layer: the nouns every phase shares, and nothing that knows of any phase.

- `errors`: the errors a user can cause (printed without a traceback, exit 2).
- `timespec`: durations and points in time as users write them (`15m`, `7d`, ISO 8601).
- `atomic`: files and directories that appear whole or not at all.
- `workspace`: every path under `.mlops/`, in one place.
- `registry`: the MLflow tracking URI and the one registry client.
- `refs`: model references (`NAME@ALIAS`, `NAME/VERSION`, a bundle directory) resolved to a local bundle.
- `predlog`: the prediction log's schema, its one writer and its one reader.
- `pages`: the HTML pages people read (one stylesheet, Jinja2 templates).
"""
