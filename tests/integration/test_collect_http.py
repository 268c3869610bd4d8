"""`mlops collect --http`: KServe's payload logger (CloudEvents over HTTP, binary content mode, as its agent
posts them) lands as prediction rows in a SQLite and a PostgreSQL log, rows the monitor's parser reads."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlops.core.ports import free_port
from mlops.core.predlog import LogFilter
from mlops.core.predlog_store import log_name, open_reader
from mlops.monitor.logstream import parse_rows
from tests.postgres import throwaway_url

pytestmark = pytest.mark.integration

REQUEST = "org.kubeflow.serving.inference.request"
RESPONSE = "org.kubeflow.serving.inference.response"


@pytest.fixture(params=["sqlite", "postgresql"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'log.sqlite'}"
        return
    with throwaway_url("mlops_collect") as url:
        yield url


@pytest.fixture
def collector(log: str) -> Iterator[str]:
    """`serve_cloudevents` in its own process (as the CLI runs it); yields its base URL."""
    proc, base = start_collector(log)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def start_collector(log: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    code = ("import sys; from mlops.collect.http import serve_cloudevents; "
            "serve_cloudevents(sys.argv[1], '127.0.0.1', int(sys.argv[2]), input_names=['age', 'city'], "
            "pair_timeout_s=1.0)")
    proc = subprocess.Popen([sys.executable, "-c", code, log, str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    return proc, answering(proc, f"http://127.0.0.1:{port}")


def answering(proc: subprocess.Popen[bytes], base: str) -> str:
    """`base` once the collector in `proc` answers /healthz."""
    for _ in range(200):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1).read()
            return base
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"collector exited: {proc.stdout.read().decode()}")  # type: ignore[union-attr]
            time.sleep(0.05)
    proc.kill()
    pytest.fail("the collector did not answer /healthz")


def post(base: str, headers: dict[str, str], body: bytes, method: str = "POST", path: str = "/"
         ) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(base + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def event(ce_id: str, kind: str, payload: Any, when: str) -> tuple[dict[str, str], bytes]:
    """Headers and body as KServe's agent (pkg/logger) sends one event in binary content mode."""
    return ({"Content-Type": "application/json", "ce-id": ce_id, "ce-type": kind, "ce-specversion": "1.0",
             "ce-source": "http://localhost:9081/", "ce-time": when, "ce-inferenceservicename": "churn",
             "ce-namespace": "models", "ce-component": "predictor", "ce-endpoint": "default"},
            json.dumps(payload).encode())


def rows_of(log: str) -> list[dict[str, Any]]:
    with open_reader(log) as reader:
        return reader.predictions(("champion",), model="churn")


def test_v1_pair_is_one_row_per_instance(collector: str, log: str) -> None:
    ce_id = uuid.uuid4().hex
    status, first = post(collector, *event(ce_id, REQUEST, {"instances": [[41, "Paris"], {"age": 30, "city": "Oslo"}]},
                                           "2026-01-01T00:00:00.000Z"))
    assert (status, first["status"]) == (200, "pending")
    status, second = post(collector, *event(ce_id, RESPONSE, {"predictions": [1, 0]}, "2026-01-01T00:00:00.250Z"))
    assert (status, second["rows"]) == (200, 2)
    rows = {r["id"]: r for r in rows_of(log)}
    assert set(rows) == {f"{ce_id}-0", f"{ce_id}-1"}
    assert json.loads(rows[f"{ce_id}-0"]["inputs"]) == {"age": 41, "city": "Paris"}
    assert json.loads(rows[f"{ce_id}-1"]["outputs"]) == {"label": 0}
    assert rows[f"{ce_id}-0"]["latency_ms"] == pytest.approx(250.0)
    assert rows[f"{ce_id}-0"]["version"] is None
    with open_reader(log) as reader:
        raw = reader.chunk(LogFilter("churn"), 0, 100)
    parsed = parse_rows(raw, {"age": "numeric", "city": "categorical"}, "classification")
    assert dict(zip(parsed.ids.tolist(), parsed.label.tolist(), strict=True)) == {f"{ce_id}-0": "1", f"{ce_id}-1": "0"}
    assert parsed.numeric["age"].tolist() == [41.0, 30.0]


def test_v2_pair_response_first(collector: str, log: str) -> None:
    ce_id = uuid.uuid4().hex
    body = {"outputs": [{"name": "label", "shape": [1], "datatype": "INT64", "data": [1]}]}
    assert post(collector, *event(ce_id, RESPONSE, body, "2026-01-01T00:00:01Z"))[0] == 200
    body = {"inputs": [{"name": "age", "shape": [1], "datatype": "FP32", "data": [52.0]},
                       {"name": "city", "shape": [1], "datatype": "BYTES", "data": ["Rome"]}]}
    assert post(collector, *event(ce_id, REQUEST, body, "2026-01-01T00:00:00Z"))[0] == 200
    (row,) = [r for r in rows_of(log) if r["id"] == ce_id]
    assert json.loads(row["inputs"]) == {"age": 52.0, "city": "Rome"}
    assert json.loads(row["outputs"]) == {"label": 1}


def test_request_alone_is_written_after_the_timeout(collector: str, log: str) -> None:
    ce_id = uuid.uuid4().hex
    assert post(collector, *event(ce_id, REQUEST, {"instances": [{"age": 1, "city": "Lima"}]},
                                  "2026-01-01T00:00:00Z"))[0] == 200
    for _ in range(100):
        found = [r for r in rows_of(log) if r["id"] == ce_id]
        if found:
            break
        time.sleep(0.1)
    assert found and json.loads(found[0]["outputs"]) == {}


def test_bad_events_get_400(collector: str) -> None:
    headers, body = event("x", REQUEST, {"instances": [{"a": 1}]}, "2026-01-01T00:00:00Z")
    no_id = {k: v for k, v in headers.items() if k != "ce-id"}
    for h, b, word in ((no_id, body, "ce-id"), ({**headers, "ce-type": "com.example"}, body, "ce-type"),
                       (headers, b"not json", "JSON"), (headers, b'{"rows": []}', "instances")):
        status, answer = post(collector, h, b)
        assert status == 400 and word in answer["error"] and answer["error"].startswith(answer["field"]), answer
    for attrs in ({"type": []}, {"id": {"a": 1}}):  # structured mode: attributes of the wrong JSON type
        event_json = {"specversion": "1.0", "id": "s1", "type": REQUEST, "source": "x",
                      "data": {"instances": [{"a": 1}]}} | attrs
        status, answer = post(collector, {"Content-Type": "application/cloudevents+json"}, json.dumps(event_json).encode())
        assert status == 400 and answer.get("error"), (attrs, status, answer)
    # payloads of the right keys but the wrong shapes: a 400, never a 500 or rows of garbage
    for payload in ({"instances": 5}, {"instances": "ab"},
                    {"inputs": [{"name": "a", "shape": "x", "datatype": "FP32", "data": [1.0]}]},
                    {"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1.0]}]},
                    {"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1.0, 2.0]},
                                {"name": "b", "shape": [3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]}):
        h, b = event(uuid.uuid4().hex, REQUEST, payload, "2026-01-01T00:00:00Z")
        status, answer = post(collector, h, b)
        assert status == 400 and answer.get("error"), (payload, status, answer)


def test_structured_mode_regression(collector: str, log: str) -> None:
    ce_id = uuid.uuid4().hex
    for kind, data, status in ((REQUEST, {"instances": [{"age": 3, "city": "Kyiv"}]}, 200),
                               (RESPONSE, {"predictions": [2.5]}, 200)):
        body = {"specversion": "1.0", "id": ce_id, "type": kind, "source": "x", "inferenceservicename": "churn",
                "datacontenttype": "application/json", "data": data}
        assert post(collector, {"Content-Type": "application/cloudevents+json"}, json.dumps(body).encode())[0] == status
    (row,) = [r for r in rows_of(log) if r["id"] == ce_id]
    assert json.loads(row["outputs"]) == {"prediction": 2.5}


def test_what_the_log_cannot_keep_is_refused_naming_the_field(collector: str, log: str) -> None:
    """Each was a 500 (too deep to parse), or a 503 "log write failed" once its pair was complete (the pair lost)."""
    deep = "[" * 500 + "]" * 500
    for payload, field, word in (('{"predictions": ' + "[" * 100_000 + "]" * 100_000 + "}", "body", "nested too deeply"),
                                 ('{"predictions": ["\\ud800"]}', "predictions[0]", "lone UTF-16 surrogate"),
                                 ('{"predictions": [{"\\udfff": 1}]}', "predictions[0]", "a key holds a lone"),
                                 ('{"predictions": [' + deep + "]}", "predictions[0]" + "[0]" * 63, "nested deeper"),
                                 ('{"predictions": [123456789012345678901234567890]}', "predictions[0]", "64 bits")):
        ce_id = uuid.uuid4().hex
        assert post(collector, *event(ce_id, REQUEST, {"instances": [{"age": 1, "city": "Lima"}]},
                                      "2026-01-01T00:00:00Z"))[0] == 200
        headers, _ = event(ce_id, RESPONSE, {}, "2026-01-01T00:00:01Z")
        status, answer = post(collector, headers, payload.encode())
        assert (status, answer["field"]) == (400, field) and word in answer["error"], (payload[:60], answer)
        assert answer["error"].startswith(f"{field}: ")


def test_no_route_and_a_wrong_method_answer_json(collector: str) -> None:
    for method, path, status, field in (("GET", "/", 405, "method"), ("PUT", "/", 405, "method"),
                                        ("POST", "/nope", 404, "path")):
        got, answer = post(collector, {"Content-Type": "application/json"}, b"{}", method, path)
        assert (got, answer["field"]) == (status, field) and answer["error"].startswith(f"{field}: "), answer


def test_sigterm_prints_the_summary(log: str) -> None:
    proc, base = start_collector(log)
    ce_id = uuid.uuid4().hex
    post(base, *event(ce_id, REQUEST, {"instances": [{"age": 1, "city": "Lima"}]}, "2026-01-01T00:00:00Z"))
    post(base, *event(ce_id, RESPONSE, {"predictions": [1]}, "2026-01-01T00:00:01Z"))
    proc.terminate()
    out, _ = proc.communicate(timeout=20)

    assert proc.returncode == 0, out
    assert "stopped: 2 events taken, 0 refused; 1 rows landed in" in out.decode(), out


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_json_prints_one_summary_when_stopped(log: str, stop: signal.Signals) -> None:
    """`mlops collect --http ... --json`: stdout holds one JSON object, the summary the text mode prints, after
    SIGTERM (how Kubernetes stops the pod) as after Ctrl-C; the readable lines go to stderr."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "collect", "--http", str(port), "--log", log,
                             "--input-names", "age,city", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = answering(proc, f"http://127.0.0.1:{port}")
    ce_id = uuid.uuid4().hex
    post(base, *event(ce_id, REQUEST, {"instances": [[1, "Lima"], [2, "Quito"]]}, "2026-01-01T00:00:00Z"))
    post(base, *event(ce_id, RESPONSE, {"predictions": ["yes", "no"]}, "2026-01-01T00:00:01Z"))
    post(base, {"Content-Type": "application/json", "ce-type": REQUEST}, b"{}")  # no ce-id: refused
    proc.send_signal(stop)
    out, err = proc.communicate(timeout=20)

    assert proc.returncode == 0, err
    summary = json.loads(out)  # one object, nothing else (json.loads refuses anything after it)
    assert summary == {"url": base + "/", "log": log_name(log), "events": 2, "refused": 1, "rows": 2, "lost": 0,
                       "duplicates": 0}
    assert "stopped: 2 events taken, 1 refused; 2 rows landed in" in err.decode(), err


def test_a_re_sent_event_of_a_written_pair_is_a_duplicate_and_not_written_again(log: str) -> None:
    """An at-least-once broker re-sends an event whose 200 it missed: the same ce-id and type. Once its pair was
    written, the retry started a new pair, written alone at its timeout (1 s here): a second row of that id."""
    proc, base = start_collector(log)
    try:
        ce_id, late = resend_each_event(base, log)
    finally:
        proc.terminate()  # nothing held: nothing is written at the stop either
        out, _ = proc.communicate(timeout=20)

    ids = [r["id"] for r in rows_of(log)]
    assert ids.count(ce_id) == 1 and ids.count(late) == 1, ids
    assert "stopped: 3 events taken, 0 refused; 2 rows landed in" in out.decode(), out
    assert "3 re-sent events held or written already, not taken again" in out.decode(), out



def test_an_event_re_sent_while_its_partner_is_awaited_is_a_duplicate(log: str) -> None:
    """A broker's retry of a request whose response has not come yet: the same event again is a duplicate (before,
    a 400 "a second request event", which the broker would count as a failure); one that differs is still a 400;
    the pair is written once. The summary does not call the retry written: it was held."""
    proc, collector = start_collector(log)
    try:
        ce_id = uuid.uuid4().hex
        request = event(ce_id, REQUEST, {"instances": [{"age": 1, "city": "Lima"}]}, "2026-01-01T00:00:00Z")
        assert post(collector, *request) == (200, {"id": ce_id, "status": "pending"})
        assert post(collector, *request) == (200, {"id": ce_id, "status": "duplicate"})
        other = event(ce_id, REQUEST, {"instances": [{"age": 2, "city": "Lima"}]}, "2026-01-01T00:00:00Z")
        status, answer = post(collector, *other)
        assert status == 400 and answer["field"] == "ce-id" and "unlike the first" in answer["error"], answer
        response = event(ce_id, RESPONSE, {"predictions": [1]}, "2026-01-01T00:00:01Z")
        assert post(collector, *response) == (200, {"id": ce_id, "rows": 1})
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert [r["id"] for r in rows_of(log)].count(ce_id) == 1
    assert "1 re-sent events held or written already, not taken again" in out.decode(), out


def resend_each_event(base: str, log: str) -> tuple[str, str]:
    """A pair, and a request written alone at its timeout, each event sent again once written: (their ids)."""
    ce_id = uuid.uuid4().hex
    request = event(ce_id, REQUEST, {"instances": [{"age": 1, "city": "Lima"}]}, "2026-01-01T00:00:00Z")
    response = event(ce_id, RESPONSE, {"predictions": [1]}, "2026-01-01T00:00:01Z")
    assert post(base, *request) == (200, {"id": ce_id, "status": "pending"})
    assert post(base, *response) == (200, {"id": ce_id, "rows": 1})
    assert post(base, *response) == (200, {"id": ce_id, "status": "duplicate"})
    assert post(base, *request) == (200, {"id": ce_id, "status": "duplicate"})
    late = uuid.uuid4().hex
    alone = event(late, REQUEST, {"instances": [{"age": 2, "city": "Quito"}]}, "2026-01-01T00:00:00Z")
    assert post(base, *alone)[1]["status"] == "pending"
    for _ in range(100):
        if [r for r in rows_of(log) if r["id"] == late]:
            break
        time.sleep(0.1)
    assert post(base, *alone) == (200, {"id": late, "status": "duplicate"})
    with urllib.request.urlopen(base + "/healthz", timeout=10) as answer:
        assert json.loads(answer.read())["pending"] == 0  # no retry held for a timeout to write alone
    return ce_id, late


def test_a_busy_port_is_one_error_line_naming_it(tmp_path: Path) -> None:
    """Another process listens on the port: uvicorn printed its own `ERROR: [Errno 98] ...` and exited 3,
    without an `error:` line or a way to go on."""
    log = tmp_path / "log.sqlite"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "mlops.cli", "collect", "--http", str(port), "--log",
                               f"sqlite:///{log}", "--json"], capture_output=True, text=True, timeout=120)

    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # --json: no summary of a collector that never ran
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert f"cannot listen on 127.0.0.1:{port}" in line and f"another process listens on port {port}" in line, line
    assert re.search(r"choose another port, e\.g\. --http \d+$", line), line
    assert "Traceback" not in done.stderr and "Errno" not in done.stderr, done.stderr
    assert not log.exists()  # refused before the log opened
