"""The serving container of one model version: a build context holding its Dockerfile, the model bundle,
the mlops package and pinned serving requirements (no torch).

The requirements are the stack `benchmarks/serve.py` measures: uvicorn on uvloop with the httptools parser,
orjson for JSON. Their versions come from the repository's requirements.lock when mlops runs from its checkout
(the lock also travels as the image's pip constraints, pinning every dependency), else from what is installed.

`docker build -t <image> <context>` builds it anywhere; nothing here needs a Docker engine. The image runs
`python -m mlops.cli serve bundle` as a non-root user, answers `/v2/health/ready` for its HEALTHCHECK, and takes
its bind address and port from $HOST and $PORT (Knative sets PORT).
"""

from __future__ import annotations

import re
import shutil
from importlib import metadata
from pathlib import Path

import mlops
from mlops.core.atomic import publishing
from mlops.core.errors import MlopsError
from mlops.core.log import say
from mlops.core.refs import ModelVersion
from mlops.deploy.kserve import image_for
from mlops.deploy.render import render
from mlops.package.bundle import bundle_files, read_bundle
from mlops.recipe.deploy import DeployConfig

# what `mlops serve` imports beyond the standard library and mlops itself (tests/integration/
# test_deploy_container.py checks this list against the imports of the running server, and that it runs on
# uvloop and httptools): the fast loop and parser are required, not uvicorn's optional extras
SERVE_PACKAGES = ("httptools", "msgspec", "numpy", "onnxruntime", "orjson", "prometheus-client", "pydantic",
                  "starlette", "uvicorn", "uvloop")
# the shared prediction logs' drivers: a replica started with `--log postgresql://...` or `redis://...`, and the
# payload logger's collector (`mlops collect --http`) that runs in this image, import one when the log opens;
# the image carries both, so where the log goes is the deployment's choice, not the image's
SHARED_LOG_PACKAGES = ("psycopg2-binary", "redis")
# what a bundle's image and text inputs add: decoding images, tokenizing text (mlops.data.media)
INPUT_PACKAGES = {"image": "pillow", "text": "tokenizers"}
LOCK_FILE = "requirements.lock"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_lock() -> Path | None:
    """The requirements.lock of the mlops checkout this package runs from (an editable install, a build
    context's copy has none); None when mlops is installed from a wheel."""
    path = Path(mlops.__file__).resolve().parent.parent / LOCK_FILE
    return path if path.is_file() else None


def read_lock(path: Path) -> dict[str, str]:
    """name -> version of the lock's pins that apply to this interpreter (a universal lock may pin a package
    twice, under exclusive markers)."""
    from packaging.markers import Marker

    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        spec, _, marker = line.split("#", 1)[0].partition(";")
        name, sep, version = spec.strip().partition("==")
        if sep and (not marker.strip() or Marker(marker.strip()).evaluate()):
            pins[norm(name)] = version.strip()
    return pins


def serve_requirements(input_kinds: set[str] | frozenset[str] = frozenset(),
                       lock: Path | None = None) -> list[tuple[str, str]]:
    """The serving packages, pinned: from `lock` when given (the versions the lock installs here and in the
    image), else from what is installed here. The bundle's inputs add pillow (images) and tokenizers (text); the
    shared logs' drivers are always there."""
    pins = read_lock(lock) if lock is not None else {}
    pinned = []
    for name in sorted({*SERVE_PACKAGES, *SHARED_LOG_PACKAGES, *(INPUT_PACKAGES[k] for k in input_kinds if k in INPUT_PACKAGES)}):
        try:
            installed: str | None = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if lock is not None:
            if norm(name) not in pins:
                raise MlopsError(f"{lock} pins no '{name}', which the serving image needs: regenerate it (make lock)")
            if installed is not None and installed != pins[norm(name)]:
                say(f"'{name}' {installed} is installed here, {lock.name} pins {pins[norm(name)]}: the image gets "
                    "the lock's (make install brings this environment back to the lock)")
            pinned.append((name, pins[norm(name)]))
        elif installed is None:
            raise MlopsError(f"'{name}' is not installed, so its version cannot be pinned for the serving image: "
                             "pip install 'mlops[serve]'")
        else:
            pinned.append((name, installed))
    return pinned


def dockerfile(cfg: DeployConfig, mv: ModelVersion, mlops_version: str | None = None,
               constraints: bool = False) -> str:
    """`constraints`: the context holds constraints.txt (the lock) and pip installs under it."""
    return render("Dockerfile.j2", model=mv.name, version=mv.version, image=image_for(cfg, mv),
                  base=cfg.image.base, port=cfg.port, mlops_version=mlops_version or mlops.__version__,
                  constraints=constraints)


def requirements_txt(requirements: list[tuple[str, str]]) -> str:
    return render("requirements.txt.j2", requirements=requirements)


def build_context(dest: Path, bundle_dir: Path, cfg: DeployConfig, mv: ModelVersion,
                  lock: Path | None = None) -> Path:
    """Write the build context at `dest` atomically (a crash leaves the old one or the new one). `lock`: the
    requirements lock to pin from (default: the checkout's, when mlops runs from one)."""

    meta = read_bundle(bundle_dir)  # refuse a broken or altered bundle before building anything around it
    lock = lock or project_lock()
    requirements = serve_requirements({i.kind for i in meta.inputs}, lock)
    with publishing(dest) as tmp:
        (tmp / "Dockerfile").write_text(dockerfile(cfg, mv, constraints=lock is not None))
        (tmp / "requirements.txt").write_text(requirements_txt(requirements))
        if lock is not None:  # every dependency of the serving packages at the version the lock pins
            shutil.copy2(lock, tmp / "constraints.txt")
        (tmp / ".dockerignore").write_text(render("dockerignore.j2"))
        (tmp / "bundle").mkdir()
        # the graph, its metadata, and the assets its inputs read (a text input's tokenizer)
        for name in bundle_files(meta):
            shutil.copy2(bundle_dir / name, tmp / "bundle" / name)
        shutil.copytree(Path(mlops.__file__).parent, tmp / "mlops",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "crd"))  # serving needs no CRD
    return dest
