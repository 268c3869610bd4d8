"""A Redis stream of the prediction log landed in a store: `mlops collect redis://HOST:PORT/DB --log STORE`.

Servers started with `--log redis://...` append one entry per row (`mlops.core.predlog_redis`). The collector
reads them as consumer `HOST:PID` of the group `mlops-collect` (created, with the stream, if absent): first its
own pending entries (a restarted collector that kept its name), then entries other consumers were given but
left unacknowledged for `claim_idle_s` (XAUTOCLAIM: a collector that died), then new ones. Each batch is written
through `open_log(STORE)`, waited for until committed, and only then acknowledged (XACK). Rows the store
already holds are skipped (`known_keys`: (id, variant) for predictions, since a shadow row shares its answered
row's id; (id, ts) for feedback), so a collector killed between the commit and the XACK re-delivers the batch
and lands nothing twice: nothing is lost, nothing duplicated. Two collectors racing on the same re-delivered
entry could still both land it (the check and the insert are not one transaction); run one per stream and store.

An entry that is not a row of the log (another writer's, a damaged one) is copied to the stream `NAME:dead`
and acknowledged, so it neither blocks the group nor disappears.

Landed entries leave the stream (`trim`, the default): every 10 s and when the run ends, XTRIM MINID removes the
entries before the oldest one any consumer group of the stream still needs (its oldest pending entry, else the
entry after its last delivered one), so Redis holds the backlog, not the whole history. A group that has read
nothing keeps everything; a reader without a group (plain XREAD) is not known to Redis: `trim=False` (`mlops
collect --keep`) leaves the stream as it is.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import BaseModel

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.predlog_pg import LogWriteError
from mlops.core.predlog_redis import connect, entry_row, stream_url
from mlops.core.predlog_store import known_keys, log_name, log_store, open_log

GROUP = "mlops-collect"
ONCE_BLOCK_MS = 500  # with once=True: how long a read waits for a new entry before the run ends
BLOCK_MS = 1000  # otherwise: between checks of the stop flag
COMMIT_TIMEOUT_S = 120
WHO = "mlops collect"


class CollectResult(BaseModel):
    """What one run of the collector did."""

    stream: str
    log: str
    consumer: str
    landed: int = 0  # rows written to the store
    skipped: int = 0  # rows the store already held (a re-delivered batch)
    dead: int = 0  # entries that were not rows of the log, moved to NAME:dead
    claimed: int = 0  # entries taken over from other consumers idle past claim_idle_s
    batches: int = 0
    pending: int = 0  # entries of the group still unacknowledged when the run ended
    trimmed: int = 0  # landed entries removed from the stream (XTRIM)


def _entry_id(value: bytes | str) -> tuple[int, int]:
    """A stream entry id, "MS-SEQ", as numbers: ids compare as (ms, seq), not as text."""
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _key(table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    return (row[0], row[4]) if table == "predictions" else (row[0], row[1])


class _Collector:
    def __init__(self, url: str, store: str | Path, batch: int) -> None:
        import redis  # connect() needs the package already; here only for its exception type

        self.client = connect(url)
        _, self.stream = stream_url(url)
        self.store = store
        self.batch = batch
        self.consumer = f"{socket.gethostname()}:{os.getpid()}"
        self.result = CollectResult(stream=self.stream, log=log_name(store), consumer=self.consumer)
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.log = open_log(store)  # creates the store's tables, so its reader opens

    def land(self, entries: list[tuple[Any, dict[Any, Any]]]) -> None:
        """Write a batch's new rows, wait for the commit, then acknowledge every entry of it."""
        if not entries:
            return
        rows: dict[str, list[tuple[Any, ...]]] = {}
        dead: list[dict[Any, Any]] = []
        for _, fields in entries:
            if fields is None:  # XAUTOCLAIM of an entry trimmed away meanwhile
                continue
            try:
                table, row = entry_row(fields)
            except (ValueError, KeyError, TypeError):
                dead.append(fields)
                continue
            rows.setdefault(table, []).append(row)
        futures = []
        for table, table_rows in rows.items():
            seen = known_keys(self.store, table, [r[0] for r in table_rows])
            new = []
            for row in table_rows:
                key = _key(table, row)
                if key not in seen:
                    seen.add(key)  # an entry delivered twice within one batch, too
                    new.append(row)
            self.result.skipped += len(table_rows) - len(new)
            self.result.landed += len(new)
            if new:
                futures.append(self.log.submit(table, new))
        for future in futures:
            future.result(timeout=COMMIT_TIMEOUT_S)  # a failed commit raises: nothing is acknowledged
        if dead:
            pipe = self.client.pipeline(transaction=False)
            for fields in dead:
                pipe.xadd(f"{self.stream}:dead", fields)
            pipe.execute()
            self.result.dead += len(dead)
            say(f"{len(dead)} entries that are not rows of the prediction log moved to {self.stream}:dead", WHO)
        self.client.xack(self.stream, GROUP, *[entry_id for entry_id, _ in entries])
        self.result.batches += 1

    def own_pending(self) -> None:
        """This consumer's entries delivered before and never acknowledged (id 0: re-read, not new)."""
        while True:
            answer = self.client.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=self.batch)
            entries = answer[0][1] if answer else []
            if not entries:
                return
            self.land(entries)

    def claim(self, idle_s: float) -> None:
        """Entries other consumers left unacknowledged for `idle_s`, taken over and landed."""
        start = "0-0"
        while True:
            answer = self.client.xautoclaim(self.stream, GROUP, self.consumer, min_idle_time=int(idle_s * 1000),
                                            start_id=start, count=self.batch)
            start, entries = answer[0], answer[1]
            self.result.claimed += len(entries)
            self.land(entries)
            if start in (b"0-0", "0-0"):
                return

    def new(self, block_ms: int) -> int:
        """One batch of new entries (waiting up to `block_ms` for the first); how many there were."""
        answer = self.client.xreadgroup(GROUP, self.consumer, {self.stream: ">"}, count=self.batch, block=block_ms)
        entries = answer[0][1] if answer else []
        self.land(entries)
        return len(entries)

    def trim(self) -> None:
        """Remove the entries no consumer group of the stream needs any more (see the module doc)."""
        needed = []
        for group in self.client.xinfo_groups(self.stream):
            name = group["name"]
            if int(group["pending"]):
                needed.append(_entry_id(self.client.xpending(self.stream, name)["min"]))
            else:
                ms, seq = _entry_id(group["last-delivered-id"])
                needed.append((ms, seq + 1))
        if needed:
            ms, seq = min(needed)
            if (ms, seq) > (0, 0):
                self.result.trimmed += int(self.client.xtrim(self.stream, minid=f"{ms}-{seq}", approximate=False))

    def progress(self) -> None:
        self.result.pending = int(self.client.xpending(self.stream, GROUP)["pending"])
        say(f"{self.result.landed} rows landed in {self.result.log} ({self.result.skipped} already there), "
            f"{self.result.pending} pending in {self.stream}", WHO)

    def close(self) -> None:
        self.log.close()
        self.client.close()


def collect_stream(url: str, store: str | Path, once: bool = False, batch: int = 500,
                   claim_idle_s: float = 30, trim: bool = True) -> CollectResult:
    """Land the Redis stream at `url` (redis://HOST:PORT/DB[?stream=NAME]) in the log `store` (a SQLite path or
    postgresql:// URL). `once`: stop when the backlog is landed and no new entry came within a short wait;
    otherwise run until SIGTERM or SIGINT (the batch in hand is finished and acknowledged first). `trim`: remove
    what every consumer group has acknowledged from the stream as it goes."""
    if log_store(store)[0] == "redis":  # a wrong store fails here, before anything is read
        raise MlopsError(f"--log {log_name(store)}: collect lands a stream in a SQLite PATH or postgresql:// store, "
                         "not in another stream")
    if batch < 1 or not 0 <= claim_idle_s < math.inf:  # NaN too
        raise MlopsError(f"--batch {batch} / --claim-idle {claim_idle_s}: a batch holds 1 entry or more, and the idle "
                         "time before claiming another collector's entries is a number of seconds, 0 or more")
    try:
        return _collect(url, store, once, batch, claim_idle_s, trim)
    except MlopsError:
        raise
    except Exception as exc:
        import redis  # connect() imported it already (an optional package): here for its exception types only

        if isinstance(exc, redis.RedisError | LogWriteError | TimeoutError):
            # nothing is lost: what was not acknowledged is delivered again to the next run
            raise MlopsError(f"collecting {log_name(url)} into {log_name(store)} stopped: {exc}; run it again once "
                             "Redis and the store answer (entries not yet acknowledged are delivered again)") from None
        raise


def _collect(url: str, store: str | Path, once: bool, batch: int, claim_idle_s: float, trim: bool) -> CollectResult:
    stop = threading.Event()
    previous: dict[int, Any] = {}
    collector = _Collector(url, store, batch)  # before the handlers: a collector that fails to start leaves none
    if not once and threading.current_thread() is threading.main_thread():
        def stopping(signum: int, frame: FrameType | None) -> None:
            say("stopping after the current batch", WHO)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, stopping)
    try:
        say(f"collecting {collector.stream} into {collector.result.log} as {collector.consumer}", WHO)
        collector.own_pending()
        collector.claim(claim_idle_s)
        last_claim = last_report = time.monotonic()
        while not stop.is_set():
            got = collector.new(ONCE_BLOCK_MS if once else BLOCK_MS)
            now = time.monotonic()
            if once and not got:
                break
            if not once and now - last_claim >= claim_idle_s:  # a collector that died meanwhile
                collector.claim(claim_idle_s)
                last_claim = now
            if now - last_report >= 10:
                if trim:
                    collector.trim()
                collector.progress()
                last_report = now
        if trim:
            collector.trim()
        collector.progress()
        return collector.result
    finally:
        collector.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
