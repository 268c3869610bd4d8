"""`mlops server start|status|stop`: the local Prefect server that runs every command's flows (light: no Prefect
import)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from mlops.cli import warm
from mlops.cli.output import emit
from mlops.engine import prefect_server as ps


def _describe(state: ps.ServerState | None) -> dict[str, Any]:
    files = ps.server_files()
    out: dict[str, Any] = {"running": state is not None, "prefect_home": str(files.home), "log": str(files.log),
                           "state_file": str(files.state)}
    if state is not None:
        out |= {"url": state.url, "ui": state.ui, "pid": state.pid, "port": state.port,
                "uptime_s": round(time.time() - state.started_at, 1), "started_at": state.started_at,
                "mlops_version": state.mlops_version, "prefect_version": state.prefect_version}
    if os.environ.get("PREFECT_API_URL"):
        out["prefect_api_url"] = os.environ["PREFECT_API_URL"]
    if ps.ephemeral_mode():
        out["mode"] = "ephemeral"
    return out


def _uptime(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    return f"{days}d {h}h {m}m" if days else f"{h}h {m}m {s}s" if h else f"{m}m {s}s"


def _print(info: dict[str, Any]) -> None:
    if info["running"]:
        print(f"local Prefect server at {info['ui']} (API {info['url']})")
        print(f"  pid        {info['pid']}   up {_uptime(info['uptime_s'])}")
        print(f"  home       {info['prefect_home']}")
        print(f"  log        {info['log']}")
    else:
        then = ("the next `mlops run` starts one" if ps.start_on_use() and not ps.ephemeral_mode() else
                "commands use Prefect's temporary server (`mlops server start` keeps one)")
        print(f"no local Prefect server runs for {info['prefect_home']}: {then}")
    if "prefect_api_url" in info:
        print(f"  note       PREFECT_API_URL={info['prefect_api_url']}: commands use that server")
    elif info.get("mode") == "ephemeral":
        print(f"  note       {ps.MODE_ENV}=ephemeral: commands use Prefect's temporary server")


def cmd_server_status(args: argparse.Namespace) -> int:
    info = _describe(ps.running())
    _print(info)
    emit(info)
    return 0


def cmd_server_start(args: argparse.Namespace) -> int:
    state, started = ps.start_server()
    info = _describe(state) | {"started": started}
    print("started" if started else "already running", file=sys.stderr)
    _print(info)
    emit(info)
    return 0


def cmd_server_stop(args: argparse.Namespace) -> int:
    state = ps.stop_server(timeout=args.timeout)
    workers = warm.stop_workers()
    info = {"stopped": state is not None, "pid": state.pid if state else None, "url": state.url if state else None,
            "warm_workers_stopped": workers}
    print(f"stopped the local Prefect server (pid {state.pid}, {state.url})" if state
          else "no local Prefect server was running")
    if workers:
        print(f"stopped {workers} warm run worker(s) (MLOPS_WARM_RUNS)")
    emit(info)
    return 0
