"""Compare runs: a table of runs with what differs between them, and a field-by-field diff of two runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.engine.runlog import flatten
from mlops.recipe.suggest import closest
from mlops.tracking.prefix import SHOWN, unique_prefix

# params every run has that say nothing about what differs
NOISE = {"data.fingerprint", "split.digest"}


def get_run(client: Any, run: str) -> Any:
    """The run whose id is `run` or starts with it (`mlops runs` shows 12 characters)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run)  # a full id: no need to list the store
    except MlflowException:
        pass
    try:
        return client.get_run(resolve_run(client, run))
    except MlflowException:  # deleted since it was listed
        raise MlopsError(f"no run '{run}' in the tracking store {client.tracking_uri}") from None


def resolve_run(client: Any, run: str) -> str:
    """The full id of the one run, in any experiment of the store, whose id starts with `run`."""
    from mlflow.entities import ViewType

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    candidates: dict[str, str] = {}
    token = None
    while experiments:
        page = client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=1000, page_token=token)
        for r in page:
            candidates[r.info.run_id] = f"{r.info.run_name or '-'}  ({_started(r.info.start_time)})"
        token = page.token
        if not token:
            break
    return unique_prefix(run, candidates, "run", f"the tracking store {client.tracking_uri}")


def _started(ms: int | None) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def read_lock(client: Any, run_id: str) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    try:
        return json.loads(Path(client.download_artifacts(run_id, "recipe.lock")).read_text())
    except (MlflowException, OSError):
        raise MlopsError(f"run {run_id} has no recipe.lock artifact (was it made by `mlops run`?)") from None


MAX_RUNS = 50_000  # the most one MLflow search returns


def list_runs(client: Any, experiment: str | None, metrics: list[str], sort: str | None, limit: int) -> list[dict[str, Any]]:
    if not 1 <= limit <= MAX_RUNS:
        raise MlopsError(f"--limit {limit}: expected a number of runs from 1 to {MAX_RUNS}")
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise MlopsError(f"no experiment '{experiment}' in {client.tracking_uri}")
        ids = [exp.experiment_id]
    else:
        ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, max_results=limit, order_by=["attributes.start_time DESC"])
    rows = []
    for r in runs:
        info, data = r.info, r.data
        seconds = (info.end_time - info.start_time) / 1000 if info.end_time else None
        kind = "sweep" if data.tags.get("mlops.sweep") else "multirun" if data.tags.get("mlops.multirun") else (
            f"trial {data.tags['mlops.trial']}" if "mlops.trial" in data.tags else "run")
        rows.append({"run_id": info.run_id, "name": info.run_name, "status": info.status, "kind": kind,
                     "parent": data.tags.get("mlflow.parentRunId"), "start_time": info.start_time,
                     "seconds": seconds, "metrics": dict(data.metrics), "params": dict(data.params),
                     "data_fingerprint": data.tags.get("mlops.data_fingerprint"),
                     "model": data.tags.get("mlops.model"), "gates": data.tags.get("mlops.gates"),
                     "vs_champion": data.tags.get("mlops.vs_champion")})
    varying = differing_params([r["params"] for r in rows])
    for row in rows:
        row["differs"] = {k: row["params"].get(k) for k in varying}
        row["shown_metrics"] = {m: row["metrics"].get(m) for m in metrics}
    _check_metrics_named(rows, [("--metric", m) for m in metrics] + ([("--sort", sort)] if sort else []))
    if sort:
        rows.sort(key=lambda r: (r["metrics"].get(sort) is None, -(r["metrics"].get(sort) or 0)))
    return rows


def _check_metrics_named(rows: list[dict[str, Any]], named: list[tuple[str, str]]) -> None:
    """A metric no listed run has is a typo far more often than a metric still to come: a column of dashes (or a
    sort that changes nothing) would hide it, so it is refused with the nearest metric the runs do have."""
    known = sorted({m for r in rows for m in r["metrics"]})
    if not rows:
        return
    for flag, metric in named:
        if metric not in known:
            near = closest(metric, known)
            hint = f"did you mean '{near}'? " if near else ""
            raise MlopsError(f"{flag} {metric}: none of the {len(rows)} runs listed has this metric ({hint}they have "
                             f"{', '.join(known[:12]) or 'none'}{', ...' if len(known) > 12 else ''})")


def differing_params(params: list[dict[str, str]]) -> list[str]:
    keys = sorted({k for p in params for k in p} - NOISE)
    return [k for k in keys if len({p.get(k) for p in params if p}) > 1]


def default_metrics(rows: list[dict[str, Any]]) -> list[str]:
    seen = {m for r in rows for m in r["metrics"]}
    preferred = ["test/auroc", "test/accuracy", "test/f1", "test/rmse", "test/r2", "best/value", "val/loss"]
    return [m for m in preferred if m in seen][:4]


def render_runs(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    from datetime import UTC, datetime
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    varying = sorted({k for r in rows for k in r["differs"]})
    table = Table(title=f"{len(rows)} runs", title_justify="left")
    for col in ["run", "kind", "status", "started", "secs", "gates", "vs champion", *metrics, *varying, "data"]:
        table.add_column(col, overflow="fold")
    for r in rows:
        started = datetime.fromtimestamp(r["start_time"] / 1000, UTC).strftime("%m-%d %H:%M:%S")
        cells = [r["run_id"][:SHOWN], r["kind"], r["status"], started,
                 f"{r['seconds']:.1f}" if r["seconds"] is not None else "-", r["gates"] or "-",
                 r["vs_champion"] or "-"]
        cells += [f"{r['metrics'][m]:.4f}" if m in r["metrics"] else "-" for m in metrics]
        cells += [str(r["differs"].get(k, "-")) for k in varying]
        cells.append((r["data_fingerprint"] or "-").replace("sha256:", "")[:10])
        table.add_row(*cells)
    buf = StringIO()
    Console(file=buf, width=200, force_terminal=False).print(table)
    return buf.getvalue()


def diff_runs(client: Any, run_a: str, run_b: str) -> list[dict[str, Any]]:
    """Every difference between two runs: resolved config, data, package versions, seeds, metrics."""
    a, b = get_run(client, run_a), get_run(client, run_b)
    lock_a, lock_b = read_lock(client, a.info.run_id), read_lock(client, b.info.run_id)
    sections = {
        "config": (flatten(lock_a["recipe"]), flatten(lock_b["recipe"])),
        "overrides": ({"overrides": " ".join(lock_a.get("overrides", []))},
                      {"overrides": " ".join(lock_b.get("overrides", []))}),
        "data": (flatten(lock_a["data"]), flatten(lock_b["data"])),
        "packages": (lock_a["packages"], lock_b["packages"]),
        "seeds": ({k: str(v) for k, v in lock_a["seeds"].items()}, {k: str(v) for k, v in lock_b["seeds"].items()}),
        "environment": ({"python": lock_a.get("python"), "git": json.dumps(lock_a.get("git"))},
                        {"python": lock_b.get("python"), "git": json.dumps(lock_b.get("git"))}),
        "metrics": ({k: repr(v) for k, v in a.data.metrics.items()}, {k: repr(v) for k, v in b.data.metrics.items()}),
    }
    rows = []
    for section, (left, right) in sections.items():
        for key in sorted(set(left) | set(right)):
            if left.get(key) != right.get(key):
                rows.append({"section": section, "key": key, "a": left.get(key), "b": right.get(key)})
    return rows


def render_diff(rows: list[dict[str, Any]], run_a: str, run_b: str) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    if not rows:
        return f"runs {run_a} and {run_b} are identical in config, data, packages, seeds and metrics\n"
    table = Table(title=f"{len(rows)} differences", title_justify="left")
    for col in ("section", "key", f"A {run_a[:SHOWN]}", f"B {run_b[:SHOWN]}"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(r["section"], r["key"], str(r["a"]), str(r["b"]))
    buf = StringIO()
    Console(file=buf, width=200, force_terminal=False).print(table)
    return buf.getvalue()
