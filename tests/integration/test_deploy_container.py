"""The serving container, without a Docker engine: `mlops deploy` writes the build context, and the test runs
the Dockerfile's exact ENTRYPOINT + CMD as a process in the context directory (standing in for WORKDIR), with
the Dockerfile's ENV and the overrides a `docker run -e` would give (HOST, PORT, MLOPS_HOME). The server must
become ready, answer a prediction, pass the Dockerfile's own HEALTHCHECK command, and import nothing that the
context's requirements.txt does not install (checked from the process's own import log). It must run the stack
the benchmark measures: uvicorn on uvloop with the httptools parser and orjson, each pinned by requirements.lock
(the image installs them, not as uvicorn's optional extras): a server that falls back to asyncio or h11 fails."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from mlops.deploy.container import LOCK_FILE, SHARED_LOG_PACKAGES, norm, read_lock
from mlops.deploy.generate import deploy_recipe
from mlops.recipe import load_recipe
from tests.conftest import ROOT
from tests.media_fixtures import NAME as MEDIA_MODEL
from tests.media_fixtures import build_media_bundle, instance
from tests.net import free_port
from tests.serve_fixtures import build_bundle

pytestmark = pytest.mark.integration

READY_TIMEOUT = 120
# imported by a library when present, declared by none: anyio's try-import of sniffio
UNDECLARED_OPTIONAL = {"sniffio"}
# the served stack is the measured stack (benchmarks/serve.py): required in the image, never optional
FAST_STACK = ("uvloop", "httptools", "orjson", "uvicorn")
ROW = {"age": 41.0, "income": 50.0, "city": "a"}


def instruction(dockerfile: str, name: str) -> str:
    """The argument text of the last `NAME ...` instruction (line continuations joined)."""
    text = re.sub(r"\\\n\s*", " ", dockerfile)
    found = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith(name + " ")]
    assert found, f"no {name} instruction"
    return found[-1]


def env_of(dockerfile: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in re.sub(r"\\\n\s*", " ", dockerfile).splitlines():
        if line.startswith("ENV "):
            out |= dict(part.split("=", 1) for part in shlex.split(line[4:]))
    return out


def healthcheck_command(dockerfile: str) -> list[str]:
    text = instruction(dockerfile, "HEALTHCHECK")
    return json.loads(text[text.index("CMD ") + 4:])


def distributions_needed(requirements: list[str]) -> tuple[set[str], set[str]]:
    """(what pip installs here for `requirements`, what their extras could add): normalised names."""
    from packaging.requirements import Requirement

    required: set[str] = set()
    optional: set[str] = set()
    todo = [norm(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in required:
            continue
        required.add(name)
        for text in metadata.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))
            elif "extra" in str(req.marker):  # installed only with an extra: imported only if present
                optional.add(norm(req.name))
    return required, optional - required


def imports_in(stderr: str) -> set[str]:
    """Top-level modules in a PYTHONPROFILEIMPORTTIME / -X importtime log."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", stderr)}


# (model, a row it takes, labels it answers): a tabular model, and one of an image, a text and a number (its
# image needs Pillow, its text the tokenizer saved in the bundle and the tokenizers package)
MODELS = {"toy": ("toy", ROW, ("yes", "no")), "media": (MEDIA_MODEL, instance(), ("neg", "pos"))}


@pytest.fixture(params=sorted(MODELS))
def context(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    name = MODELS[request.param][0]
    bundle = (build_bundle(tmp_path / "bundle", name=name) if request.param == "toy"
              else build_media_bundle(tmp_path / "bundle", name=name))
    loaded = load_recipe(str(ROOT / "recipes" / "quickstart.yaml"), [f"registry.model_name={name}"])
    result = deploy_recipe(loaded, str(bundle), out=tmp_path / "out", targets=["container"])
    return Path(result["files"]["image_context"])


def model_of(context: Path) -> tuple[str, dict[str, Any], tuple[str, ...]]:
    name = json.loads((context / "bundle" / "bundle.json").read_text())["name"]
    return next(m for m in MODELS.values() if m[0] == name)


def test_context_holds_what_the_image_needs(context: Path) -> None:
    dockerfile = (context / "Dockerfile").read_text()

    assert (context / "bundle" / "model.onnx").is_file() and (context / "bundle" / "bundle.json").is_file()
    meta = json.loads((context / "bundle" / "bundle.json").read_text())
    for spec in meta["inputs"]:  # the assets its inputs read travel with it
        if spec.get("text"):
            assert (context / "bundle" / spec["text"]["tokenizer"]).is_file()
    kinds = {spec["kind"] for spec in meta["inputs"]}
    requirements_text = (context / "requirements.txt").read_text()
    assert ("image" in kinds) == bool(re.search(r"^pillow==\d", requirements_text, re.M))
    assert ("text" in kinds) == bool(re.search(r"^tokenizers==\d", requirements_text, re.M))
    assert (context / "mlops" / "cli" / "__main__.py").is_file() and not list(context.rglob("__pycache__"))
    assert not (context / "mlops" / "deploy" / "crd").exists()  # what serving does not need stays out
    requirements = (context / "requirements.txt").read_text()
    assert not re.search(r"^(torch|lightning|mlflow|prefect)", requirements, re.M)
    assert re.search(r"^onnxruntime==\d", requirements, re.M)
    # the fast loop, parser and JSON library at the lock's versions, and the lock as pip's constraints
    lock = read_lock(ROOT / LOCK_FILE)
    for name in FAST_STACK:
        assert re.search(rf"^{name}=={re.escape(lock[norm(name)])}$", requirements, re.M), f"{name} not pinned by the lock"
    assert (context / "constraints.txt").read_text() == (ROOT / LOCK_FILE).read_text()
    assert "-c constraints.txt" in instruction(dockerfile, "RUN")
    assert re.search(r"^USER 10001$", dockerfile, re.M)  # numeric, so Kubernetes can enforce runAsNonRoot
    assert "/v2/health/ready" in instruction(dockerfile, "HEALTHCHECK")
    assert instruction(dockerfile, "FROM").endswith("-slim")


def test_entrypoint_runs_the_server_as_the_image_would(context: Path, tmp_path: Path) -> None:
    dockerfile = (context / "Dockerfile").read_text()
    command = json.loads(instruction(dockerfile, "ENTRYPOINT")) + json.loads(instruction(dockerfile, "CMD"))
    port = free_port()
    # the image's environment, plus what `docker run -e` would override here: loopback, a free port, a home
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **env_of(dockerfile),
           "HOST": "127.0.0.1", "PORT": str(port), "MLOPS_HOME": str(tmp_path / "home"),
           "PYTHONPROFILEIMPORTTIME": "1"}  # every import of the server process, on its stderr
    stdout, stderr = tmp_path / "server.out", tmp_path / "server.err"
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        proc = subprocess.Popen(command, cwd=context, env=env, stdout=out, stderr=err)
    try:
        health = subprocess.run(healthcheck_command(dockerfile), env=env, capture_output=True, timeout=30)
        assert health.returncode != 0, "the HEALTHCHECK passed before the server started"

        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            assert proc.poll() is None, f"entrypoint exited {proc.returncode}: {stdout.read_text()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as resp:
                    ready: dict[str, Any] = json.loads(resp.read())
                    break
            except OSError:
                assert time.monotonic() < deadline, f"not ready in {READY_TIMEOUT} s: {stdout.read_text()[-2000:]}"
                time.sleep(0.2)
        name, row, labels = model_of(context)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/{name}:predict",
                                         data=json.dumps({"instances": [row]}).encode(),
                                         headers={"content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer = json.loads(resp.read())
        health = subprocess.run(healthcheck_command(dockerfile), env=env, capture_output=True, timeout=30)
    finally:
        proc.terminate()
        proc.wait(timeout=20)

    assert ready == {"ready": True}
    assert answer["predictions"][0]["label"] in labels
    assert health.returncode == 0, health.stderr
    said = stdout.read_text()
    assert "from bundle" in said  # the bundle of the context, by its relative path
    # the loop and parser uvicorn was told to run (named, so no silent fallback), and the JSON library the log
    # and the answers use: the fast ones, each installed in this environment
    stack = re.search(r"^mlops serve: stack: (.*)$", said, re.M)
    assert stack, said[-2000:]
    for part in ("event loop uvloop ", "HTTP parser httptools ", "JSON orjson ", "uvicorn "):
        assert part in stack.group(1) + " ", f"the server did not run on {part.strip()}: {stack.group(1)}"
    assert (tmp_path / "home" / "predictions" / f"{name}.sqlite").is_file()

    imported = imports_in(stderr.read_text())
    assert "mlops" in imported and "onnxruntime" in imported
    # what any interpreter of this environment imports at startup (site hooks) is not the server's
    bare = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                          timeout=60, env=env)
    imported -= imports_in(bare.stderr)
    # the context's own copy of mlops was the one imported (WORKDIR comes first on sys.path)
    probe = subprocess.run([sys.executable, "-c", "import mlops; print(mlops.__file__)"], cwd=context,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == str(context / "mlops" / "__init__.py")
    by_module = metadata.packages_distributions()
    third_party = {norm(d) for m in imported if m not in sys.stdlib_module_names
                   and m != "mlops" for d in by_module.get(m, [])}
    pinned = [line.split("==")[0] for line in (context / "requirements.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    required, optional = distributions_needed(pinned)
    missing = third_party - required - optional - UNDECLARED_OPTIONAL
    assert not missing, f"imported but not installed by requirements.txt: {sorted(missing)}"
    # a SQLite log here: the shared logs' drivers are pinned for a deployment's --log, imported when one opens
    assert {norm(p) for p in SHARED_LOG_PACKAGES} <= {norm(p) for p in pinned}
    unused = {p.lower() for p in pinned} - third_party - {norm(p) for p in SHARED_LOG_PACKAGES}
    assert not unused, f"requirements.txt pins a package the server never imports: {sorted(unused)}"
    assert {"uvloop", "httptools", "orjson"} <= third_party  # imported by the server, not merely installed
    assert not third_party & {"torch", "lightning", "mlflow", "prefect", "pandas", "hydra-core"}
