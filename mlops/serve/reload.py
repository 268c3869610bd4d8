"""Follow registry aliases while serving: when `quickstart@champion` moves to another version, the running
server swaps the new version in, with no restart and no failed request.

A server started from `NAME@ALIAS` references (the champion, `--shadow`, `--ab`) re-resolves them every
`interval` seconds on a thread of its own, and at once on `POST /v2/repository/models/<name>/load` (KServe's
V2 model-repository extension; `mlops promote` and `mlops rollout` call it). A moved alias is downloaded
and opened off the request path; the swap itself is one attribute assignment, so a request is answered
wholly by the old version or wholly by the new one. A version that cannot be loaded, or that takes other
inputs than the running one, is refused and reported: the old version keeps serving.

A bundle directory or a `NAME/VERSION` reference is pinned: it never moves, so it is not watched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.refs import ModelRef, fetch
from mlops.package.predictor import Predictor

DEFAULT_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Watched:
    variant: str  # champion | challenger | shadow: the arm this reference fills
    ref: str  # NAME@ALIAS
    version: str | None  # what is being served now


def is_alias(ref: str) -> bool:
    try:
        return ModelRef.parse(ref).moves
    except MlopsError:
        return False


class AliasWatcher:
    """Re-resolves the alias references of a server and swaps moved ones in (see the module docstring)."""

    def __init__(self, server: Any, refs: dict[str, tuple[str, str | None]], interval: float = DEFAULT_INTERVAL_S,
                 resolve: Callable[[str], tuple[Any, str | None]] | None = None) -> None:
        self.server = server
        self.watched = {variant: Watched(variant, ref, version) for variant, (ref, version) in refs.items()
                        if is_alias(ref)}
        self.interval = interval
        self._resolve = resolve
        self._lock = threading.Lock()  # one check at a time: the timer and an explicit load never race
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.watched and self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="alias-watcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # a registry hiccup must not stop the watching, nor the serving
                say(f"alias check failed: {type(exc).__name__}: {exc}", "mlops serve")

    def check(self) -> list[dict[str, Any]]:
        """Re-resolve every watched alias now; swap in those that moved. Returns what changed (or failed)."""
        changes = []
        with self._lock:
            for watched in list(self.watched.values()):
                change = self._check_one(watched)
                if change is not None:
                    changes.append(change)
        return changes

    def _check_one(self, watched: Watched) -> dict[str, Any] | None:
        started = time.perf_counter()
        try:
            bundle, version = self._resolve_ref(watched.ref)
            if version == watched.version:
                return None
            predictor = Predictor(bundle, max_batch=self.server.predictor.max_batch)
            self.server.swap(watched.variant, predictor, version)
        except MlopsError as exc:
            say(f"{watched.ref} not reloaded, still serving version {watched.version}: {exc}", "mlops serve")
            return {"variant": watched.variant, "ref": watched.ref, "from": watched.version, "error": str(exc)}
        self.watched[watched.variant] = Watched(watched.variant, watched.ref, version)
        seconds = time.perf_counter() - started
        say(f"{watched.ref} moved: {watched.variant} now serves version {version} (was "
              f"{watched.version}; loaded in {seconds:.2f} s, no restart)", "mlops serve")
        return {"variant": watched.variant, "ref": watched.ref, "from": watched.version, "to": version}

    def _resolve_ref(self, ref: str) -> tuple[Any, str | None]:
        if self._resolve is not None:
            return self._resolve(ref)
        resolved = fetch(ref)
        return resolved.path, resolved.version
