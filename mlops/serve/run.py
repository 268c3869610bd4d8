"""Start the server: resolve the model reference to a bundle, open the log, run uvicorn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.refs import ModelRef, fetch
from mlops.core.workspace import workspace

CHAMPION_VARIANT = "champion"


def check_batching(batch_max: int | None, batch_wait_ms: float | None) -> tuple[int, float]:
    """`--batch-max N` (absent, 0 or 1: off) and `--batch-wait-ms W` -> (batch_max, wait), refusing nonsense."""
    from mlops.serve.batching import DEFAULT_WAIT_MS

    n = 1 if batch_max is None else batch_max
    wait = DEFAULT_WAIT_MS if batch_wait_ms is None else batch_wait_ms
    if n < 0:
        raise MlopsError(f"--batch-max {n}: expected a number of rows >= 2 (or 1 for no batching)")
    if not 0 <= wait <= 10_000:  # NaN fails too
        raise MlopsError(f"--batch-wait-ms {wait}: expected milliseconds in [0, 10000]")
    return max(n, 1), wait


def build_server(ref: str, log_path: str | None = None, max_batch: int = 1024, max_body: int | None = None,
                 shadow: str | None = None, ab: str | None = None, ab_key_header: str | None = None,
                 batch_max: int | None = None, batch_wait_ms: float | None = None,
                 reload_interval: float | None = None) -> Any:
    """The server for `ref`; `shadow` is another model reference, `ab` is `REF:PERCENT`; `batch_max` > 1
    turns adaptive batching on (up to that many rows per model call, waiting at most `batch_wait_ms`)."""
    from mlops.core.predlog import PredictionLog
    from mlops.serve.app import DEFAULT_MAX_BODY, Server
    from mlops.serve.predictor import Predictor
    from mlops.serve.reload import DEFAULT_INTERVAL_S, AliasWatcher
    from mlops.serve.routing import CHALLENGER, DEFAULT_KEY_HEADER, SHADOW, Arm, check_compatible, parse_ab

    ab_ref, ab_percent = parse_ab(ab) if ab else (None, 0.0)  # a malformed --ab fails before anything loads
    batch_max, batch_wait_ms = check_batching(batch_max, batch_wait_ms)
    if reload_interval is not None and not 0 <= reload_interval <= 86_400:  # NaN fails too
        raise MlopsError(f"--reload-interval {reload_interval}: expected seconds in [0, 86400] (0: never)")
    served = fetch(ref)
    predictor = Predictor(served.path, max_batch=max_batch)
    arms: dict[str, Arm] = {}
    refs = {CHAMPION_VARIANT: served}
    for flag, other, variant in (("--shadow", shadow, SHADOW), ("--ab", ab_ref, CHALLENGER)):
        if other:
            arm = fetch(other)
            other_predictor = Predictor(arm.path, max_batch=max_batch)
            check_compatible(predictor, other_predictor, flag)
            arms[variant] = Arm(other_predictor, arm.version, variant)
            refs[variant] = arm
    log = PredictionLog(log_path or workspace().prediction_log(predictor.name))
    server = Server(predictor, log, version=served.version, token=os.environ.get("MLOPS_SERVE_TOKEN") or None,
                    max_body=max_body or DEFAULT_MAX_BODY, shadow=arms.get(SHADOW), challenger=arms.get(CHALLENGER),
                    ab_percent=ab_percent, ab_key_header=ab_key_header or DEFAULT_KEY_HEADER, batch_max=batch_max,
                    batch_wait_ms=batch_wait_ms)
    watched = {variant: (r.ref.text, r.version) for variant, r in refs.items()}
    server.watcher = AliasWatcher(server, watched, DEFAULT_INTERVAL_S if reload_interval is None else reload_interval)
    return server


def serve(ref: str, host: str, port: int, log_path: str | None, max_batch: int, shadow: str | None = None,
          ab: str | None = None, ab_key_header: str | None = None, batch_max: int | None = None,
          batch_wait_ms: float | None = None, reload_interval: float | None = None) -> None:
    import uvicorn

    server = build_server(ref, log_path, max_batch, shadow=shadow, ab=ab, ab_key_header=ab_key_header,
                          batch_max=batch_max, batch_wait_ms=batch_wait_ms, reload_interval=reload_interval)
    print(f"mlops serve: model '{server.predictor.name}' version {server.version or '-'} from {server.predictor.path}",
          flush=True)
    if server.challenger is not None:
        c = server.challenger
        print(f"mlops serve: A/B challenger '{c.name}' version {c.version or '-'} from {c.predictor.path} answers "
              f"{server.ab_percent:g}% of request keys (header {server.ab_key_header}, else the body's id)", flush=True)
    if server.shadow is not None:
        a = server.shadow.arm
        print(f"mlops serve: shadow '{a.name}' version {a.version or '-'} from {a.predictor.path} (logged as "
              "variant 'shadow', never answers)", flush=True)
    if server.batchers:
        print(f"mlops serve: adaptive batching: up to {server.batch_max} rows per model call, a request waits at "
              f"most {server.batch_wait_ms:g} ms for others (none when it is alone)", flush=True)
    if server.watcher.watched and server.watcher.interval > 0:
        print(f"mlops serve: following {', '.join(w.ref for w in server.watcher.watched.values())}: a moved alias is "
              f"swapped in within {server.watcher.interval:g} s (or at once on POST "
              f"/v2/repository/models/{server.predictor.name}/load), no restart", flush=True)
    print(f"mlops serve: http://{host}:{port}/v2/models/{server.predictor.name}/infer  (log {server.log.path})",
          flush=True)
    uvicorn.run(server.app(), host=host, port=port, log_level="warning", access_log=False)


def serve_with_kserve(args: Any) -> None:
    """`mlops serve --runtime kserve`: the stock `kserve.ModelServer` over the same bundle. What only our app
    does (log, feedback, shadow, A/B, batching, token, body limit) is refused rather than silently dropped."""
    unsupported = [flag for flag, value in (("--log", args.log), ("--shadow", args.shadow), ("--ab", args.ab),
                                            ("--batch-max", args.batch_max), ("--batch-wait-ms", args.batch_wait_ms))
                   if value is not None]
    if os.environ.get("MLOPS_SERVE_TOKEN"):
        unsupported.append("MLOPS_SERVE_TOKEN")
    if unsupported:
        raise MlopsError(f"--runtime kserve serves inference only; {', '.join(unsupported)} need the default "
                         "runtime (--runtime mlops)")
    served = fetch(args.model)
    from mlops.serve.kserve_runtime import serve_kserve

    serve_kserve(served.path, args.host, args.port, max_batch=args.max_batch, version=served.version)


def feedback_log_path(model: str | None, log_path: str | None) -> Path:
    """`--log PATH`, else the default log of `--model` (a name, NAME@ALIAS, NAME/VERSION or a bundle dir)."""
    if log_path:
        return Path(log_path)
    if not model:
        raise MlopsError("give --log PATH (the prediction log) or --model NAME (for its default log)")
    name = ModelRef.parse(model).model_name() if ("@" in model or "/" in model or Path(model).is_dir()) else model
    return workspace().prediction_log(name)
