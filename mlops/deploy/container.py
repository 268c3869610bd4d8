"""The serving container of one model version: a build context holding its Dockerfile, the model bundle,
the mlops package and pinned serving requirements (no torch).

`docker build -t <image> <context>` builds it anywhere; nothing here needs a Docker engine. The image runs
`python -m mlops.cli serve bundle` as a non-root user, answers `/v2/health/ready` for its HEALTHCHECK, and takes
its bind address and port from $HOST and $PORT (Knative sets PORT).
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

import mlops
from mlops.core.atomic import publishing
from mlops.core.errors import MlopsError
from mlops.core.refs import ModelVersion
from mlops.deploy.kserve import image_for
from mlops.deploy.render import render
from mlops.package.bundle import read_bundle
from mlops.recipe.deploy import DeployConfig

# what `mlops serve` imports beyond the standard library and mlops itself (tests/integration/
# test_deploy_container.py checks this list against the imports of the running server)
SERVE_PACKAGES = ("numpy", "onnxruntime", "orjson", "prometheus-client", "pydantic", "starlette", "uvicorn")
# what a bundle's image and text inputs add: decoding images, tokenizing text (mlops.data.media)
INPUT_PACKAGES = {"image": "pillow", "text": "tokenizers"}


def serve_requirements(input_kinds: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """The serving packages with the versions installed here: the image gets what was tested, and what the
    bundle's inputs need (pillow for images, tokenizers for text) and nothing more."""
    pinned = []
    for name in sorted({*SERVE_PACKAGES, *(INPUT_PACKAGES[k] for k in input_kinds if k in INPUT_PACKAGES)}):
        try:
            pinned.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            raise MlopsError(f"'{name}' is not installed, so its version cannot be pinned for the serving image: "
                             "pip install 'mlops[serve]'") from None
    return pinned


def dockerfile(cfg: DeployConfig, mv: ModelVersion, mlops_version: str | None = None) -> str:
    return render("Dockerfile.j2", model=mv.name, version=mv.version, image=image_for(cfg, mv),
                  base=cfg.image.base, port=cfg.port, mlops_version=mlops_version or mlops.__version__)


def requirements_txt(requirements: list[tuple[str, str]]) -> str:
    return render("requirements.txt.j2", requirements=requirements)


def build_context(dest: Path, bundle_dir: Path, cfg: DeployConfig, mv: ModelVersion) -> Path:
    """Write the build context at `dest` atomically (a crash leaves the old one or the new one)."""

    meta = read_bundle(bundle_dir)  # refuse a broken or altered bundle before building anything around it
    with publishing(dest) as tmp:
        (tmp / "Dockerfile").write_text(dockerfile(cfg, mv))
        (tmp / "requirements.txt").write_text(requirements_txt(serve_requirements({i.kind for i in meta.inputs})))
        (tmp / ".dockerignore").write_text(render("dockerignore.j2"))
        (tmp / "bundle").mkdir()
        # the graph, its metadata, and the assets its inputs read (a text input's tokenizer)
        for name in ("model.onnx", "bundle.json", *(i.text.tokenizer for i in meta.inputs if i.text is not None)):
            shutil.copy2(bundle_dir / name, tmp / "bundle" / name)
        shutil.copytree(Path(mlops.__file__).parent, tmp / "mlops",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "crd"))  # serving needs no CRD
    return dest
