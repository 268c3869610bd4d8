"""`mlops stream`: score a Redis Stream with a consumer group, at least once and idempotently.

One message is one row: either a field per model input (text, parsed as CSV cells are; a text input's field
as it is; an image input's field the encoded image, its base64 or `{"b64": ...}`) or one `json` field holding
an object of named columns (as a V1 instance). Each batch of messages goes through these steps:

1. judge every row with the server's column checks (`mlops.score.rows.judge`) and score the good ones;
2. write one record per message, in one Lua script (atomic): a prediction to the output stream, or the
   message and its error (the field at fault named) to the dead-letter stream. A record is written only if its
   marker key `mlops:written:<stream>:<id>` was absent (SET NX, kept DEDUPE_TTL_S), so a redelivered
   message is never written twice;
3. write the predictions to the prediction log (the server's table, variant `stream`; SQLite or PostgreSQL),
   skipping ids already there, in one transaction that holds the log's write lock from check to commit;
4. XACK the batch.

A consumer killed anywhere in 1-4 leaves its messages pending; whoever reads them next (the same consumer
name restarted, or another that claims them with XAUTOCLAIM once they have been idle `claim_idle_ms`)
repeats 1-4, and 2 and 3 skip what was already written: each message ends with exactly one output record and
at most one log row. The prediction id is `<stream>:<message id>`, the same on every delivery.

A message delivered `max_deliveries` times without being acknowledged (e.g. one that kills the process) is
dead-lettered instead of being scored again.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import signal
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.predlog import prediction_rows
from mlops.core.predlog_pg import redacted
from mlops.core.predlog_redis import check_url
from mlops.core.predlog_store import idempotent_target, log_name, open_idempotent_log
from mlops.core.workspace import workspace
from mlops.package.predictor import EMBEDDING, Predictor, RequestError, parse_json_body
from mlops.score.rows import from_text, judge

if TYPE_CHECKING:
    from mlops.package.predictor import Predictor

VARIANT = "stream"
JSON_FIELD = "json"
DEDUPE_TTL_S = 7 * 24 * 3600  # longer than any message should stay pending unacknowledged
MAX_DELIVERIES = 5

# KEYS: none (all names in ARGV; single-node Redis). ARGV: ttl, then per record: marker key, target stream,
# number of field/value pairs, the pairs. Returns how many records were written (the rest were already there).
WRITE_ONCE = """
local ttl = tonumber(ARGV[1])
local i = 2
local written = 0
while i <= #ARGV do
  local marker, target, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local fields = {}
  for k = 1, 2 * n do fields[k] = ARGV[i + 2 + k] end
  if redis.call('SET', marker, '1', 'NX', 'EX', ttl) then
    redis.call('XADD', target, '*', unpack(fields))
    written = written + 1
  end
  i = i + 3 + 2 * n
end
return written
"""


@dataclass
class StreamConfig:
    url: str
    stream: str
    group: str
    consumer: str
    output_stream: str
    dead_letter: str
    log: str | Path | None  # a SQLite file or a postgresql:// URL; None: the model's default log
    batch: int = 64
    block_ms: int = 1000
    claim_idle_ms: int = 60_000
    max_messages: int | None = None
    idle_exit_s: float | None = None
    max_deliveries: int = MAX_DELIVERIES

    @classmethod
    def from_args(cls, args: Any, recipe_log: str | None = None) -> StreamConfig:
        """The flags, checked; `recipe_log` (the recipe's `monitor.log`) is the log when `--log` is not given,
        so that the monitor reads what the consumer writes."""
        for flag, value, low in (("--batch", args.batch, 1), ("--block-ms", args.block_ms, 1),
                                 ("--claim-idle-ms", args.claim_idle_ms, 0), ("--max-messages", args.max_messages, 1)):
            if value is not None and value < low:
                raise MlopsError(f"{flag} {value}: expected a number >= {low}")
        if args.idle_exit_s is not None and not args.idle_exit_s > 0:
            raise MlopsError(f"--idle-exit-s {args.idle_exit_s}: expected a positive number of seconds")
        if not args.source.startswith(("redis://", "rediss://", "unix://")):
            raise MlopsError(f"--source {redacted(args.source)}: expected a Redis URL (redis://HOST:PORT/DB)")
        if not args.stream:
            raise MlopsError("--stream '': expected the name of the input stream")
        _check_source_options(args.source, args.stream)
        check_url(args.source, "--source", "redis://[:PASSWORD@]HOST[:PORT]/DB")
        output_stream = args.output_stream or f"{args.stream}:predictions"
        dead_letter = args.dead_letter or f"{args.stream}:dead"
        # a record written into the input stream is read back as a message: each round wraps the last (a dead
        # letter holds its payload) and the stream grows without end
        for flag, target in (("--output-stream", output_stream), ("--dead-letter", dead_letter)):
            if target == args.stream:
                raise MlopsError(f"{flag} {target} is the input stream (--stream {args.stream}): what the consumer "
                                 "writes there it would read again, without end; name another stream")
        log = (idempotent_target(args.log) if args.log else
               idempotent_target(recipe_log, "the recipe's monitor.log") if recipe_log else None)
        return cls(url=args.source, stream=args.stream, group=args.group,
                   consumer=args.consumer or f"{socket.gethostname()}-{os.getpid()}",
                   output_stream=output_stream, dead_letter=dead_letter,
                   log=log, batch=args.batch, block_ms=args.block_ms,
                   claim_idle_ms=args.claim_idle_ms, max_messages=args.max_messages, idle_exit_s=args.idle_exit_s)


def _check_source_options(source: str, stream: str) -> None:
    """Refuse the URL options that mean something else to a consumer: `stream=` (the prediction log's URLs name
    their stream so; a consumer reads --stream) and `decode_responses` (messages are read as bytes: an image
    field is binary, and field names are decoded here, naming one that is no UTF-8)."""
    for key, value in parse_qsl(urlsplit(source).query, keep_blank_values=True):
        if key == "stream":
            raise MlopsError(f"--source {redacted(source)!r}: the stream to read is given by --stream (here "
                             f"{stream}), not by the URL: drop ?stream={value}")
        if key == "decode_responses":
            raise MlopsError(f"--source {redacted(source)!r}: a consumer reads each message as bytes (an image field "
                             f"is binary): drop ?decode_responses={value}")


@dataclass
class StreamResult:
    handled: int = 0  # messages acknowledged by this run
    predicted: int = 0
    dead: int = 0
    recovered: int = 0  # of which pending from an earlier delivery (own restart or claimed)
    duplicates: int = 0  # records (stream or log) found already written: redeliveries
    unseen: int = 0  # categories never seen in training, scored as missing (data.categories.unseen)
    stopped: str = ""


class BadMessage(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def decode_message(fields: dict[bytes, bytes], predictor: Predictor) -> dict[str, Any]:
    """A message's fields as a row of plain values, with the server's rules for names: every model input
    present, nothing else. A `json` field holds the row as a JSON object (an image as `{"b64": ...}`, as in a
    V1 instance); otherwise each field is a column whose text is read as a CSV cell would be (empty or NA ->
    missing), a text field's as it is, and an image field holds the image (see `image_field`)."""

    text: dict[str, Any] = {}
    for k, v in fields.items():
        try:
            name = k.decode()
        except UnicodeDecodeError:
            raise BadMessage(k.decode(errors="backslashreplace"), "field name is not UTF-8") from None
        spec = predictor.columns.get(name)
        if spec is not None and spec.image is not None:
            text[name] = image_field(name, v)
            continue
        try:
            text[name] = v.decode()
        except UnicodeDecodeError:
            raise BadMessage(name, "value is not UTF-8 text") from None
    names = list(predictor.columns)
    if JSON_FIELD in text and JSON_FIELD not in predictor.columns:
        if len(text) > 1:
            extra = sorted(set(text) - {JSON_FIELD})[0]
            raise BadMessage(extra, f"unknown field next to '{JSON_FIELD}' (send the row in '{JSON_FIELD}' only)")
        row = _json(JSON_FIELD, text[JSON_FIELD])
        if not isinstance(row, dict):
            raise BadMessage(JSON_FIELD, "must be a JSON object of named columns")
    else:
        row = {k: v if k not in predictor.columns or not predictor.columns[k].scalar
               else from_text(v, predictor.columns[k].dtype != "string") for k, v in text.items()}
    unknown = sorted(set(row) - set(names))
    if unknown:
        raise BadMessage(unknown[0], f"unknown column (expected: {', '.join(names)})")
    for n in names:
        if n not in row:
            raise BadMessage(n, "missing column (send an empty value, or null in JSON, for a missing value)")
    return row


def image_field(name: str, raw: bytes) -> Any:
    """An image field's value as a request's: `{"b64": "..."}` (JSON, as in a V1 instance), the base64 of the
    encoded image, or the encoded image itself (Redis fields are binary-safe)."""
    if raw.lstrip().startswith(b"{"):
        return _json(name, raw, ' (an image field holds {"b64": ...}, base64 or the image\'s bytes)')
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return raw  # not base64: the image's own bytes, which the check decodes (or refuses as unreadable)


def _json(name: str, raw: str | bytes, hint: str = "") -> Any:
    """A field's JSON read as a request body is (`parse_json_body`): strict, and refused without a crash when it
    nests past the recursion limit or escapes a lone surrogate, which no dead letter could carry. The field at
    fault is the message's field, or the column inside the `json` field (`city`, `city[0]`)."""
    try:
        return parse_json_body(raw)
    except RequestError as exc:
        where = exc.field  # "body", "body[0]" (in a list), or "city", "city[0]" (in an object)
        if where == "body" or where.startswith("body["):
            field = name + where[4:]
        else:
            field = where if name == JSON_FIELD else f"{name}.{where}"
        raise BadMessage(field, exc.message.replace("invalid JSON", f"invalid JSON{hint}", 1)) from None


class Consumer:
    def __init__(self, config: StreamConfig, predictor: Predictor, version: str | None, log: str | Path) -> None:
        import redis

        self.config = config
        self.predictor = predictor
        self.version = version
        # named, so `CLIENT LIST` shows which consumer a connection is and what it last did
        self.redis = redis.Redis.from_url(config.url, socket_timeout=max(config.block_ms / 1000 + 10, 30),
                                          client_name=f"mlops-stream:{config.group}:{config.consumer}")
        self.write_once = self.redis.register_script(WRITE_ONCE)
        self.log = open_idempotent_log(log)
        self.result = StreamResult()
        self.stopping = threading.Event()

    # --- the loop ------------------------------------------------------------------------------------------

    def run(self) -> StreamResult:
        import redis

        c = self.config
        try:
            self.redis.xgroup_create(c.stream, c.group, id="0", mkstream=True)
        except redis.ResponseError as exc:  # the first command: a database out of range, a key not a stream
            if "BUSYGROUP" not in str(exc):
                raise MlopsError(f"--source {redacted(c.url)} --stream {c.stream}: Redis refused the consumer: "
                                 f"{exc}") from None
        except redis.ConnectionError as exc:
            raise MlopsError(f"cannot reach Redis at {redacted(c.url)}: {exc}") from None
        self._drain_own_pending()
        self._claim_idle()
        last_message = last_claim = time.monotonic()
        while not self.stopping.is_set():
            if self._limit_reached():
                self.result.stopped = "max-messages"
                break
            if time.monotonic() - last_claim >= max(c.claim_idle_ms / 1000, 1.0):
                self._claim_idle()
                last_claim = time.monotonic()
            reply = self.redis.xreadgroup(c.group, c.consumer, {c.stream: ">"}, count=self._room(), block=c.block_ms)
            messages = _entries(reply)
            if messages:
                self._handle(messages, recovered=False)
                last_message = time.monotonic()
            elif c.idle_exit_s is not None and time.monotonic() - last_message >= c.idle_exit_s:
                self.result.stopped = "idle"
                break
        if self.stopping.is_set() and not self.result.stopped:
            self.result.stopped = "signal"
        return self.result

    def _room(self) -> int:
        if self.config.max_messages is None:
            return self.config.batch
        return max(1, min(self.config.batch, self.config.max_messages - self.result.handled))

    def _limit_reached(self) -> bool:
        return self.config.max_messages is not None and self.result.handled >= self.config.max_messages

    def _drain_own_pending(self) -> None:
        """Messages delivered to this consumer name before and never acknowledged (a restart after a crash)."""
        c = self.config
        cursor = "0"
        while not self.stopping.is_set() and not self._limit_reached():
            messages = _entries(self.redis.xreadgroup(c.group, c.consumer, {c.stream: cursor}, count=self._room()))
            if not messages:
                return
            self._handle(messages, recovered=True)
            cursor = messages[-1][0]

    def _claim_idle(self) -> None:
        """Take over messages other consumers have left unacknowledged for `claim_idle_ms` (they died)."""
        c = self.config
        cursor = "0-0"
        while not self.stopping.is_set() and not self._limit_reached():
            reply = self.redis.xautoclaim(c.stream, c.group, c.consumer, c.claim_idle_ms, cursor, count=self._room())
            cursor, messages = reply[0], [m for m in reply[1] if m is not None]
            if messages:
                self._handle(messages, recovered=True)
            if cursor in (b"0-0", "0-0"):
                break
        self._forget_dead_consumers()

    def _forget_dead_consumers(self) -> None:
        c = self.config
        for info in self.redis.xinfo_consumers(c.stream, c.group):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name != c.consumer and info["pending"] == 0 and info["idle"] >= max(c.claim_idle_ms, 60_000):
                self.redis.xgroup_delconsumer(c.stream, c.group, name)

    # --- one batch -----------------------------------------------------------------------------------------

    def _handle(self, messages: list[tuple[Any, Any]], recovered: bool) -> None:
        c = self.config
        started = time.perf_counter()
        ids = [_text(mid) for mid, _ in messages]
        too_often = self._delivered_too_often(ids) if recovered else {}
        dead: dict[int, tuple[str, str]] = {}
        rows: list[tuple[int, dict[str, Any]]] = []
        for k, (_, fields) in enumerate(messages):
            if fields is None:  # trimmed or deleted while pending: nothing left to score
                dead[k] = ("message", "deleted from the stream before it was scored")
            elif ids[k] in too_often:
                dead[k] = ("message", f"delivered {too_often[ids[k]]} times without being acknowledged: the "
                                      "consumer failed on it each time")
            else:
                try:
                    rows.append((k, decode_message(fields, self.predictor)))
                except BadMessage as exc:
                    dead[k] = (exc.field, exc.message)
        predicted: dict[int, dict[str, Any]] = {}
        inputs: dict[int, dict[str, Any]] = {}
        imputed: dict[int, list[str]] = {}  # per message, the columns whose unseen category was imputed
        if rows:
            columns = {n: [r[n] for _, r in rows] for n in self.predictor.columns}
            judged = judge(self.predictor, columns, len(rows))
            good = [k for (k, _), ok in zip(rows, judged.ok.tolist(), strict=True) if ok]
            for (k, _), problems in zip(rows, judged.problems, strict=True):
                if problems:
                    dead[k] = problems[0]
            if good:
                outputs = self._predict(judged.feeds, good, dead)
                logged = self.predictor.log_rows(judged.feeds)  # texts and image digests, never pixels
                unseen = self.predictor.unseen(judged.feeds)
                named = self.predictor.imputed(unseen, len(good)) or [[] for _ in good]
                per_row = Counter(i for at in unseen.values() for i in at)
                for j, k in enumerate(good):
                    if k in outputs:
                        predicted[k] = outputs[k]
                        inputs[k] = logged[j]
                        imputed[k] = named[j]
                        self.result.unseen += per_row[j]
        latency = (time.perf_counter() - started) * 1000

        records: list[str] = [str(DEDUPE_TTL_S)]
        for k in range(len(messages)):
            pid = f"{c.stream}:{ids[k]}"
            if k in predicted:
                fields = {"id": pid, "source_id": ids[k], "model": self.predictor.name, "version": self.version or ""}
                fields |= {name: _field_value(v) for name, v in predicted[k].items() if name != EMBEDDING}
                if imputed[k]:  # as a V1 answer names them
                    fields["imputed"] = ",".join(imputed[k])
                target = c.output_stream
            else:
                field, message = dead[k]
                fields = {"id": pid, "source_id": ids[k], "source_stream": c.stream, "field": field, "error": message,
                          "payload": json.dumps({_text(a): _payload(b)
                                                 for a, b in (messages[k][1] or {}).items()})}
                target = c.dead_letter
            pairs = [x for kv in fields.items() for x in kv]
            records += [f"mlops:written:{target}:{pid}", target, str(len(fields)), *pairs]
        written = int(self.write_once(args=records))
        duplicates = len(messages) - written
        logged = [k for k in range(len(messages)) if k in predicted]
        duplicates += self.log.write(prediction_rows(
            [f"{c.stream}:{ids[k]}" for k in logged], self.predictor.name, self.version, VARIANT,
            [inputs[k] for k in logged], [predicted[k] for k in logged], latency))
        self.redis.xack(c.stream, c.group, *ids)
        r = self.result
        r.handled += len(messages)
        r.predicted += len(predicted)
        r.dead += len(messages) - len(predicted)
        r.duplicates += duplicates
        if recovered:
            r.recovered += len(messages)

    def _predict(self, feeds: dict[str, np.ndarray], good: list[int], dead: dict[int, tuple[str, str]]
                 ) -> dict[int, dict[str, Any]]:
        """Outputs per message; if the model fails on the batch, row by row, dead-lettering the rows it fails on."""
        try:
            return dict(zip(good, self.predictor.predict(feeds).log_instances(), strict=True))
        except Exception:  # an ONNX Runtime error on some row: find it rather than fail the batch
            out = {}
            for j, k in enumerate(good):
                try:
                    out[k] = self.predictor.predict({n: v[j:j + 1] for n, v in feeds.items()}).log_instances()[0]
                except Exception as exc:
                    dead[k] = ("model", f"the model failed on this row: {exc}")
            return out

    def _delivered_too_often(self, ids: list[str]) -> dict[str, int]:
        c = self.config
        pending = self.redis.xpending_range(c.stream, c.group, min=min(ids, key=_id_key), max=max(ids, key=_id_key),
                                            count=len(ids) * 4 + 16, consumername=c.consumer)
        wanted = set(ids)
        return {_text(p["message_id"]): int(p["times_delivered"]) for p in pending
                if _text(p["message_id"]) in wanted and int(p["times_delivered"]) > c.max_deliveries}

    def close(self) -> None:
        self.log.close()
        self.redis.close()


def _entries(reply: Any) -> list[tuple[Any, Any]]:
    """XREADGROUP's reply (RESP2 list or RESP3 dict) as [(id, fields)]."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [m for entries in reply.values() for m in (entries[0] if entries and isinstance(entries[0], list)
                                                            else entries)]
    return [m for _, entries in reply for m in entries]


def _id_key(message_id: str) -> tuple[int, int]:
    ms, _, seq = message_id.partition("-")
    return int(ms), int(seq or 0)


def _text(v: Any) -> str:
    return v.decode(errors="backslashreplace") if isinstance(v, bytes) else str(v)


def _payload(v: Any) -> Any:
    """A field's value in a dead letter's payload: its text, or `{"b64": ...}` for binary (an image's bytes), so
    the message can be sent again as it was."""
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(v).decode("ascii")}
    return str(v)


def _field_value(v: Any) -> str:
    if isinstance(v, list | tuple):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def consume(config: StreamConfig, bundle: Path, version: str | None, install_signals: bool = True) -> StreamResult:
    """Run a consumer until SIGTERM/SIGINT, `max_messages` or `idle_exit_s`; a batch in flight is finished first."""

    predictor = Predictor(bundle, max_batch=max(config.batch, 1))
    consumer = Consumer(config, predictor, version, config.log or workspace().prediction_log(predictor.name))
    previous = {}
    if install_signals:
        def stop(signum: int, frame: Any) -> None:
            consumer.stopping.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, stop)
    say(f"model '{predictor.name}' version {version or '-'} consuming {config.stream} as "
          f"{config.group}/{config.consumer} -> {config.output_stream} (dead letters {config.dead_letter}, log "
          f"{log_name(consumer.log.path)})", "mlops stream")
    import redis

    try:
        return consumer.run()
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # after redis-py's own retries
        raise MlopsError(f"lost Redis at {config.url}: {exc}. Messages not yet acknowledged stay pending and are "
                         "scored when a consumer starts again (the same --consumer at once, another after "
                         "--claim-idle-ms)") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        consumer.close()
