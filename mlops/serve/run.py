"""Start the server: resolve the model reference to a bundle, open the log, run uvicorn."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.ports import check_listen
from mlops.core.predlog import SHADOW
from mlops.core.predlog_store import log_name, log_target, open_log
from mlops.core.refs import CHALLENGER, CHAMPION, ModelRef, fetch
from mlops.core.workspace import workspace
from mlops.package.predictor import Predictor
from mlops.serve.app import DEFAULT_MAX_BODY, Server
from mlops.serve.batching import DEFAULT_WAIT_MS
from mlops.serve.fastpath import FastInference, fast_protocol
from mlops.serve.grpc import grpc_service
from mlops.serve.kserve_runtime import serve_kserve
from mlops.serve.reload import DEFAULT_INTERVAL_S, AliasWatcher
from mlops.serve.routing import DEFAULT_KEY_HEADER, Arm, check_compatible, parse_ab
from mlops.serve.wire import DEFAULT_BODY_TIMEOUT_S, http_protocol


def check_batching(batch_max: int | None, batch_wait_ms: float | None) -> tuple[int, float]:
    """`--batch-max N` (absent, 0 or 1: off) and `--batch-wait-ms W` -> (batch_max, wait), refusing nonsense."""
    n = 1 if batch_max is None else batch_max
    wait = DEFAULT_WAIT_MS if batch_wait_ms is None else batch_wait_ms
    if n < 0:
        raise MlopsError(f"--batch-max {n}: expected a number of rows >= 2 (or 1 for no batching)")
    if not 0 <= wait <= 10_000:  # NaN fails too
        raise MlopsError(f"--batch-wait-ms {wait}: expected milliseconds in [0, 10000]")
    return max(n, 1), wait


@dataclass(frozen=True)
class ServeOptions:
    """Everything `mlops serve` takes, as one value from the command line to the server."""

    model: str  # the champion: NAME@ALIAS, NAME/VERSION or a bundle directory
    host: str = "127.0.0.1"
    port: int = 8080
    log: str | None = None  # the prediction log; default .mlops/predictions/<model>.sqlite
    max_batch: int = 1024  # most rows one request may carry
    max_body: int | None = None  # most bytes one request may carry
    shadow: str | None = None  # a model that sees every answered request and never answers
    ab: str | None = None  # `MODEL:PERCENT`: a challenger answering PERCENT % of request keys
    ab_key_header: str = DEFAULT_KEY_HEADER
    batch_max: int | None = None  # adaptive batching: up to this many rows per model call (None, 0, 1: off)
    batch_wait_ms: float | None = None  # the longest a request waits for others to join its batch
    reload_interval: float | None = None  # seconds between alias checks (0: only on request)
    runtime: Literal["mlops", "kserve"] = "mlops"
    body_timeout: float | None = None  # seconds a request body may take to arrive in full (default 30)
    grpc_port: int | None = None  # the V2 gRPC endpoint's port, beside HTTP (None: no gRPC)

    @classmethod
    def from_args(cls, args: Any) -> ServeOptions:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def check_options(options: ServeOptions) -> None:
    """What every runtime takes refused before anything loads: a port out of range (uvicorn would bind another
    one, or fail after the model loaded), a request limit under one row, flags that do nothing alone."""
    for flag, port in (("--port", options.port), ("--grpc-port", options.grpc_port)):
        if port is not None and not 0 < port < 65536:
            raise MlopsError(f"{flag} {port}: expected a port from 1 to 65535")
    if options.grpc_port is not None and options.grpc_port == options.port:
        raise MlopsError(f"--grpc-port {options.grpc_port} is --port too: HTTP and gRPC need a port each")
    if options.max_batch < 1:
        raise MlopsError(f"--max-batch {options.max_batch}: expected the most rows one request may carry, at least 1")
    if options.batch_wait_ms is not None and (options.batch_max or 1) <= 1:
        raise MlopsError(f"--batch-wait-ms {options.batch_wait_ms} does nothing without --batch-max N (N >= 2): "
                         "batching is off")
    if not options.ab_key_header.strip():
        raise MlopsError("--ab-key-header '': expected a header name (default X-Request-Key)")


def check_body_timeout(body_timeout: float | None) -> float:
    """`--body-timeout S` (absent: the default), refusing nonsense."""
    timeout = DEFAULT_BODY_TIMEOUT_S if body_timeout is None else body_timeout
    if not 0 < timeout <= 3600:  # NaN fails too
        raise MlopsError(f"--body-timeout {timeout}: expected seconds in (0, 3600]")
    return timeout


def build_server(options: ServeOptions) -> Server:
    """The server of `options`: its models fetched and checked against each other, its log opened. Bad options
    fail before anything loads."""
    check_options(options)
    ab_ref, ab_percent = parse_ab(options.ab) if options.ab else (None, 0.0)
    batch_max, batch_wait_ms = check_batching(options.batch_max, options.batch_wait_ms)
    body_timeout = check_body_timeout(options.body_timeout)
    interval = options.reload_interval
    if interval is not None and not 0 <= interval <= 86_400:  # NaN fails too
        raise MlopsError(f"--reload-interval {interval}: expected seconds in [0, 86400] (0: never)")
    served = fetch(options.model)
    predictor = Predictor(served.path, max_batch=options.max_batch)
    arms: dict[str, Arm] = {}
    refs = {CHAMPION: served}
    for flag, other, variant in (("--shadow", options.shadow, SHADOW), ("--ab", ab_ref, CHALLENGER)):
        if other:
            arm = fetch(other)
            other_predictor = Predictor(arm.path, max_batch=options.max_batch)
            check_compatible(predictor, other_predictor, flag)
            arms[variant] = Arm(other_predictor, arm.version, variant)
            refs[variant] = arm
    log = open_log(options.log or workspace().prediction_log(predictor.name),  # a path or a postgresql:// URL
                   limits=predictor.meta.log_limits.limits())
    server = Server(predictor, log, version=served.version, token=os.environ.get("MLOPS_SERVE_TOKEN") or None,
                    max_body=options.max_body or DEFAULT_MAX_BODY, shadow=arms.get(SHADOW),
                    challenger=arms.get(CHALLENGER), ab_percent=ab_percent, ab_key_header=options.ab_key_header,
                    batch_max=batch_max, batch_wait_ms=batch_wait_ms, body_timeout_s=body_timeout)
    watched = {variant: (r.ref.text, r.version) for variant, r in refs.items()}
    server.watcher = AliasWatcher(server, watched, DEFAULT_INTERVAL_S if interval is None else interval)
    return server


def serve(options: ServeOptions) -> None:
    """Run the server until interrupted: `options.runtime` mlops (ours) or kserve (the stock ModelServer)."""
    check_options(options)
    # a port another process holds is one error line before the model loads, not uvicorn's OSError and exit 3
    # after it (a port taken in between still fails the start-up)
    check_listen("--port", options.host, options.port)
    if options.grpc_port is not None and options.runtime != "kserve":  # kserve's refusal of the flag says more
        check_listen("--grpc-port", options.host, options.grpc_port)
    if options.runtime == "kserve":
        serve_with_kserve(options)
        return
    import uvicorn

    server = build_server(options)
    if options.grpc_port is not None:  # on uvicorn's event loop, for the app's lifetime (its lifespan)
        server.services.append(grpc_service(server, options.host, options.grpc_port))
    app = server.app()
    protocol = fast_protocol(http_protocol(), app)
    loop = event_loop()
    for line in _describe(server, options):
        say(f"{line}", "mlops serve")
    say(f"{stack_line(loop, protocol)}", "mlops serve")
    # http: a request uvicorn's parser refuses is answered with our JSON 400; ws="none": this app has no
    # WebSocket route, and an upgrade request is answered as plain HTTP (not a bodiless 403 from uvicorn);
    # loop named, not "auto": the loop reported above is the one uvicorn runs (it has no silent fallback then)
    uvicorn.run(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                http=protocol, ws="none", loop=loop)


def event_loop() -> Literal["uvloop", "asyncio"]:
    """uvloop when installed (as uvicorn's `auto` would pick, and as the serving image installs it), else asyncio."""
    try:
        import uvloop  # noqa: F401 - the test uvicorn's `auto` makes, repeated
    except ImportError:
        return "asyncio"
    return "uvloop"


def stack_line(loop: str, protocol: type) -> str:
    """What serves the requests, with versions: the event loop, the HTTP parser, the JSON library. The serving
    image installs the fast ones (uvloop, httptools, orjson: mlops/deploy/container.py), as the benchmark runs."""
    parser = "httptools" if "HttpTools" in protocol.__name__ else "h11"
    # mlops.core.predlog imported orjson at its import when it is installed, else it writes with json
    codec = "orjson" if "orjson" in sys.modules else "json"
    parts = [f"uvicorn {_version('uvicorn')}", f"event loop {loop} {_version(loop)}",
             f"HTTP parser {parser} {_version(parser)}", f"JSON {codec} {_version(codec)}"]
    if issubclass(protocol, FastInference):
        parts.append("inference fast path on")
    return "stack: " + ", ".join(p.rstrip() for p in parts)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:  # asyncio, json: the standard library's
        return ""


def _describe(server: Server, options: ServeOptions) -> list[str]:
    lines = [f"model '{server.predictor.name}' version {server.version or '-'} from {server.predictor.path}"]
    if server.challenger is not None:
        c = server.challenger
        lines.append(f"A/B challenger '{c.name}' version {c.version or '-'} from {c.predictor.path} answers "
                     f"{server.ab_percent:g}% of request keys (header {server.ab_key_header}, else the body's id)")
    if server.shadow is not None:
        a = server.shadow.arm
        lines.append(f"shadow '{a.name}' version {a.version or '-'} from {a.predictor.path} (logged as variant "
                     "'shadow', never answers)")
    if server.batchers:
        lines.append(f"adaptive batching: up to {server.batch_max} rows per model call, a request waits at most "
                     f"{server.batch_wait_ms:g} ms for others (none when it is alone)")
    if server.watcher.watched and server.watcher.interval > 0:
        lines.append(f"following {', '.join(w.ref for w in server.watcher.watched.values())}: a moved alias is "
                     f"swapped in within {server.watcher.interval:g} s (or at once on POST "
                     f"/v2/repository/models/{server.predictor.name}/load), no restart")
    log = log_name(server.log.path) if server.log else None  # a URL without its password
    lines.append(f"http://{options.host}:{options.port}/v2/models/{server.predictor.name}/infer  (log {log})")
    if options.grpc_port is not None:
        lines.append(f"grpc://{options.host}:{options.grpc_port} (the V2 gRPC protocol: ModelInfer and the rest)")
    return lines


def serve_with_kserve(args: ServeOptions) -> None:
    """`mlops serve --runtime kserve`: the stock `kserve.ModelServer` over the same bundle. What only our app
    does (log, feedback, shadow, A/B, batching, token, body limit) is refused rather than silently dropped."""
    unsupported = [flag for flag, value in (("--log", args.log), ("--shadow", args.shadow), ("--ab", args.ab),
                                            ("--batch-max", args.batch_max), ("--batch-wait-ms", args.batch_wait_ms),
                                            ("--grpc-port", args.grpc_port))
                   if value is not None]
    if os.environ.get("MLOPS_SERVE_TOKEN"):
        unsupported.append("MLOPS_SERVE_TOKEN")
    if unsupported:
        raise MlopsError(f"--runtime kserve serves inference only; {', '.join(unsupported)} "
                         f"{'needs' if len(unsupported) == 1 else 'need'} the default runtime (--runtime mlops)")
    check_options(args)
    body_timeout = check_body_timeout(args.body_timeout)
    served = fetch(args.model)
    serve_kserve(served.path, args.host, args.port, max_batch=args.max_batch, version=served.version,
                 body_timeout_s=body_timeout)


def feedback_log_path(model: str | None, log_path: str | None) -> str | Path:
    """`--log PATH`, else the default log of `--model` (a name, NAME@ALIAS, NAME/VERSION or a bundle dir)."""
    if log_path:  # a URL stays a URL: Path() would squash its //
        return log_target(log_path)
    if not model:
        raise MlopsError("give --log PATH (the prediction log) or --model NAME (for its default log)")
    name = ModelRef.parse(model).model_name() if ("@" in model or "/" in model or Path(model).is_dir()) else model
    return workspace().prediction_log(name)
