"""The load test for real: `mlops serve` on a bundle started on loopback and driven by Locust in its own process,
its figures gated like any metric, `mlops loadtest` on a bundle and on a live URL, and failures counted when a
server answers errors or nobody listens. Each run measures 2 s or less."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mlops.core.ports import free_port
from mlops.evaluate.gates import evaluate_gates
from mlops.evaluate.loadtest import Settings, run_load_test, served
from mlops.recipe.schema import Gate
from tests.polling import until
from tests.serve_fixtures import build_bundle, training_frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUICK = Settings(users=2, duration_s=2, warmup_s=0.5, rows=20, timeout_s=30)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("loadtest") / "toy")


def test_the_served_bundle_under_load_is_measured_and_gated(bundle: Path) -> None:
    result = run_load_test(bundle, training_frame(30), QUICK)
    assert result.target.startswith("http://127.0.0.1:") and result.target.endswith("/v1/models/toy:predict")
    assert result.requests > 0 and result.rps > 0
    assert result.failures == 0 and result.error_rate == 0.0 and result.errors == {}
    assert result.p50_ms is not None and result.p95_ms is not None and result.p99_ms is not None
    assert 0 < result.p50_ms <= result.p95_ms <= result.p99_ms
    assert result.peak_memory_mb is not None and result.peak_memory_mb > 0
    assert len(result.series) >= 2 and sum(p.requests for p in result.series) == result.requests

    metrics = {"metrics": result.metrics()}
    gates = [Gate(metric="load/error_rate", max=0), Gate(metric="load/rps", min=0.1),
             Gate(metric="load/p99_ms", max=1e-9)]
    verdicts = evaluate_gates(gates, metrics, {}, None, None, {}, {}, seed=0)
    assert [v.status for v in verdicts] == ["passed", "passed", "failed"]


def test_the_server_is_stopped_after_the_test(bundle: Path, tmp_path: Path) -> None:
    with served(bundle, tmp_path, 30) as (_base, proc):
        assert proc.poll() is None
    assert proc.poll() is not None


class _Flaky(BaseHTTPRequestHandler):
    """Answers every other request with a 503, the rest with a 200."""

    count = 0

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.rfile.read(int(self.headers.get("content-length", 0)))
        type(self).count += 1
        status = 503 if type(self).count % 2 else 200
        body = b'{"predictions": [1]}'
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_answers_errors_has_an_error_rate(bundle: Path, flaky_url: str) -> None:
    result = run_load_test(bundle, training_frame(10), Settings(users=1, duration_s=1, warmup_s=0, rows=10,
                                                                 timeout_s=10), url=flaky_url)
    assert result.requests > 0 and 0 < result.error_rate < 1
    assert set(result.errors) == {"HTTP 503"} and result.peak_memory_mb is None


def test_nobody_listening_is_all_failures(bundle: Path) -> None:
    result = run_load_test(bundle, training_frame(10), Settings(users=1, duration_s=1, warmup_s=0, rows=10,
                                                                 timeout_s=5), url=f"http://127.0.0.1:{free_port()}")
    assert result.error_rate == 1.0 and result.errors and not any(k.startswith("HTTP") for k in result.errors)


def _cli(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_"))} | {
        "MLOPS_HOME": str(tmp / ".mlops")}
    return subprocess.run([sys.executable, "-m", "mlops.cli", "loadtest", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def test_cli_on_a_bundle_prints_json_and_fails_a_broken_bound(bundle: Path, tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    training_frame(20).to_csv(rows, index=False)
    ok = _cli(str(bundle), "--json", "--users", "2", "--duration", "1.5", "--warmup", "0.5", "--data", str(rows),
              "--max-error-rate", "0", tmp=tmp_path)
    assert ok.returncode == 0, ok.stderr
    out = json.loads(ok.stdout)
    assert out["model"] == str(bundle) and out["failed"] == [] and out["requests"] > 0 and out["error_rate"] == 0
    assert out["peak_memory_mb"] > 0 and "load test" in ok.stderr

    # no --data: rows drawn from the bundle's training schema; an impossible bound fails with exit 3
    broken = _cli(str(bundle), "--users", "1", "--duration", "1", "--warmup", "0", "--max-p99-ms", "1e-9",
                  tmp=tmp_path)
    assert broken.returncode == 3, broken.stdout + broken.stderr
    assert "load/p99_ms" in broken.stderr and "above its maximum" in broken.stderr


def test_cli_against_a_live_url(bundle: Path, tmp_path: Path) -> None:
    with served(bundle, tmp_path, 30) as (base, _proc):
        live = _cli(str(bundle), "--url", base, "--json", "--users", "1", "--duration", "1", "--warmup", "0",
                    tmp=tmp_path)
    assert live.returncode == 0, live.stderr
    out = json.loads(live.stdout)
    assert out["target"].startswith(base) and out["requests"] > 0 and out["peak_memory_mb"] is None
    bad = _cli(str(bundle), "--url", "ftp://127.0.0.1:1", tmp=tmp_path)
    assert bad.returncode == 2 and "expected http://HOST:PORT" in bad.stderr


def test_a_canary_that_breaks_its_load_bounds_gets_no_traffic(tmp_path: Path) -> None:
    from mlops.core.registry import registry_client
    from mlops.deploy.rollout import RolloutOptions, rollout
    from mlops.recipe import load_recipe
    from tests.deploy_fixtures import CRD, mlops_home, register_version

    bound = "deploy.rollout.checks.load_test={users:1,duration_s:1,warmup_s:0,max_p99_ms:1e-9,min_rps:0.1}"
    lines: list[str] = []
    with mlops_home(tmp_path / ".mlops"):
        stable, canary = register_version(tmp_path, "toy", 1), register_version(tmp_path, "toy", 2)
        result = rollout(load_recipe(str(ROOT / "recipes" / "quickstart.yaml"), ["registry.model_name=toy", bound]),
                         f"toy/{canary}", RolloutOptions(stable=f"toy/{stable}", local_port=free_port(),
                                                         out=tmp_path / "rollout", crd=CRD), report=lines.append)
        champion = str(registry_client().get_registered_model("toy").aliases["champion"])
    assert result.decision == "rollback" and result.steps == [] and result.manifests == [] and not result.promoted
    assert result.load_test is not None and result.load_test["requests"] > 0 and result.load_test["error_rate"] == 0
    # error rate and rps are within their bounds; only the impossible p99 is broken
    assert [f.split()[0] for f in result.load_test["failed"]] == ["load/p99_ms"]
    assert "no traffic moved" in result.reason and "FAILED: load/p99_ms" in lines[0]
    assert champion == stable


def test_cli_with_every_request_failed_or_a_bound_out_of_range_says_so(bundle: Path, tmp_path: Path) -> None:
    nobody = _cli(str(bundle), "--url", f"http://127.0.0.1:{free_port()}", "--users", "1", "--duration", "1",
                  "--warmup", "0", tmp=tmp_path)
    assert nobody.returncode == 2, nobody.stdout + nobody.stderr  # it exited 0, its figures those of the errors
    assert "error: every one of the" in nobody.stderr and "requests to http://127.0.0.1:" in nobody.stderr
    for flag, value in (("--max-error-rate", "2"), ("--max-error-rate", "nan"), ("--min-rps", "-1")):
        bad = _cli(str(bundle), flag, value, tmp=tmp_path)
        assert bad.returncode == 2 and f"error: {flag} {value}: expected a number from 0 to" in bad.stderr, bad.stderr


def test_sigterm_stops_the_server_and_locust_it_started(bundle: Path, tmp_path: Path) -> None:
    """`timeout 8 mlops loadtest ...` left the server and Locust (each in a session of its own) running at full CPU,
    and their temporary directories behind."""
    import os

    import psutil

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_"))} | {
        "MLOPS_HOME": str(tmp_path / ".mlops"), "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "mlops.cli", "loadtest", str(bundle), "--users", "1",
                             "--duration", "120", "--warmup", "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    started: list[psutil.Process] = []

    def both_children() -> bool:  # the server and Locust, each the head of its own session
        started[:] = psutil.Process(proc.pid).children()
        return len(started) >= 2

    until(both_children, "the load test's server and Locust to start", 120, proc=proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
    gone, alive = psutil.wait_procs(started, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert not list(tmp_path.glob("mlops-lo*")), list(tmp_path.iterdir())  # both temporary directories removed
