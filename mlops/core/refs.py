"""Model references, as users write them, resolved to a local bundle.

A reference is one of:
- a bundle directory (holding `model.onnx` and `bundle.json`): pinned, used as it is;
- `NAME/VERSION`: a registered version, pinned;
- `NAME@ALIAS` (`quickstart@champion`): whatever version the alias points at now; it can move.

`fetch(ref)` is the one way every phase turns a reference into files: it asks the registry which version is
meant and downloads that version's bundle once into the workspace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlops.core.atomic import publishing
from mlops.core.errors import MlopsError
from mlops.core.registry import registry_client
from mlops.core.workspace import workspace

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION, CHALLENGER = "champion", "challenger"
BUNDLE_FILE = "bundle.json"


def dns_name(name: str) -> str:
    """A model name as a Kubernetes object name: lower case, `_` and `.` become `-`."""
    return re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")[:63] or "model"


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version (or a bundle directory, whose version is a content tag `sha-...`)."""

    name: str
    version: str

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def label(self) -> str:
        """`v3` for a registered version; a bundle's content version (`sha-...`) as it is."""
        return f"v{self.version}" if self.version.isdigit() else self.version

    @property
    def tag(self) -> str:
        """The image tag of this version: `quickstart-v3`."""
        return f"{dns_name(self.name)}-{self.label}"


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference. `kind` says how it resolves; `name` is empty for a directory until it is read."""

    text: str
    kind: Literal["directory", "alias", "version"]
    name: str = ""
    alias: str | None = None
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        if Path(text).is_dir():
            return cls(text, "directory")
        if "@" in text:
            name, alias = text.split("@", 1)
            if name and alias:
                return cls(text, "alias", name, alias=alias)
        elif "/" in text:
            name, version = text.split("/", 1)
            if name and version.isdigit():
                return cls(text, "version", name, version=version)
            if name and version:  # the registry numbers its versions: this was meant as a directory, or mistyped
                raise MlopsError(f"'{text}' is not a model reference: no bundle directory is there, and '{version}' "
                                 f"is not a version of the registry (a number, e.g. {name}/3)")
        raise MlopsError(f"'{text}' is not a model reference: use NAME@ALIAS (e.g. quickstart@champion), "
                         "NAME/VERSION (e.g. quickstart/3) or a bundle directory")

    @property
    def moves(self) -> bool:
        """Whether the version this reference means can change (an alias), so a server should follow it."""
        return self.kind == "alias"

    def model_name(self) -> str:
        """The registered model's name; a bundle directory's from its `bundle.json`."""
        return self.name or bundle_name(Path(self.text))


@dataclass(frozen=True)
class Resolved:
    """A reference resolved to a local bundle: where its files are and which version they are."""

    ref: ModelRef
    path: Path
    name: str
    version: str | None  # the registry's version; None for a bundle directory

    @property
    def label(self) -> str:
        """`NAME/VERSION` for a registered version, the directory for a bundle directory."""
        return f"{self.name}/{self.version}" if self.version else str(self.path.resolve())

    def model_version(self) -> ModelVersion:
        """The version as deployments name it: the registry's, or `sha-<checksum>` for a bundle directory."""
        if self.version is not None:
            return ModelVersion(self.name, self.version)
        sha = str(bundle_json(self.path).get("onnx_sha256", ""))[:12]
        return ModelVersion(self.name, f"sha-{sha}")


def bundle_json(path: Path) -> dict[str, Any]:
    """The bundle directory `path`'s bundle.json as JSON, unchecked (`mlops.package.bundle.read_bundle` checks
    it). A file cut short or emptied says so, naming it: the bundle is there, its description is damaged."""
    meta_file = path / BUNDLE_FILE
    try:
        raw = meta_file.read_bytes()
    except OSError:
        raise MlopsError(f"{path} is not a model bundle (needs model.onnx and {BUNDLE_FILE})") from None
    damaged = "the bundle was altered or cut short: restore it, or export the model again"
    if not raw.strip():
        raise MlopsError(f"{meta_file} is empty: {damaged}")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise MlopsError(f"{meta_file} is not valid JSON (not UTF-8 text): {damaged}") from None
    except json.JSONDecodeError as exc:
        raise MlopsError(f"{meta_file} is not valid JSON ({exc.msg}: line {exc.lineno}, column {exc.colno}): "
                         f"{damaged}") from None
    if not isinstance(data, dict):
        raise MlopsError(f"{meta_file}: expected a JSON object, got {type(data).__name__}: {damaged}")
    return data


def bundle_name(path: Path) -> str:
    return str(bundle_json(path).get("name", ""))


def resolve_version(client: MlflowClient, ref: str | ModelRef) -> ModelVersion:
    """`NAME@ALIAS` or `NAME/VERSION` -> the registered version it means now."""
    parsed, mv = _registered(client, ref)
    return ModelVersion(parsed.name, str(mv.version))


def pinned_identity(client: MlflowClient, ref: str | ModelRef) -> tuple[str, str] | None:
    """What a registered reference means now: its pinned `NAME/VERSION`, and an identity of its content (the
    version's run and the bundle checksum it was registered with; a number deleted and registered again has
    another run). None when it names nothing registered (a model with no champion yet)."""
    try:
        parsed, mv = _registered(client, ref)
    except MlopsError:
        return None
    pinned = ModelVersion(parsed.name, str(mv.version)).ref
    return pinned, f"{pinned} run {mv.run_id} onnx {mv.tags.get('onnx_sha256', '?')}"


def _registered(client: MlflowClient, ref: str | ModelRef) -> tuple[ModelRef, Any]:
    """`ref` parsed, and the registry's entry it means now (an mlflow ModelVersion: version, run id, tags)."""
    from mlflow.exceptions import MlflowException

    parsed = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
    if parsed.kind == "directory":
        raise MlopsError(f"'{parsed.text}' is a bundle directory, not a registered model (NAME@ALIAS, NAME/VERSION)")
    try:
        if parsed.alias is not None:
            return parsed, client.get_model_version_by_alias(parsed.name, parsed.alias)
        return parsed, client.get_model_version(parsed.name, str(parsed.version))
    except MlflowException as exc:
        raise MlopsError(f"no registered model '{parsed.text}' in {client.tracking_uri}: {exc.message}") from None


def download_bundle(client: MlflowClient, mv: ModelVersion) -> Path:
    """The bundle of a registered version, downloaded once into the workspace (whole or not at all)."""
    target = workspace().bundle(mv.name, mv.version)
    if (target / BUNDLE_FILE).is_file() and (target / "model.onnx").is_file():
        return target
    run_id = client.get_model_version(mv.name, mv.version).run_id
    if target.parent.exists():  # left half-downloaded by a crash (before downloads were published whole)
        shutil.rmtree(target.parent, ignore_errors=True)
    with publishing(target.parent, keep_existing=True) as tmp:
        client.download_artifacts(run_id, "bundle", str(tmp))
    return target


def fetch(ref: str | ModelRef, uri: str | None = None, client: MlflowClient | None = None) -> Resolved:
    """A reference's bundle on local disk. A directory is used in place; a registered version is looked up
    in the store `uri` (default: the configured one) and downloaded once."""
    parsed = ref if isinstance(ref, ModelRef) else ModelRef.parse(ref)
    if parsed.kind == "directory":
        path = Path(parsed.text)
        return Resolved(parsed, path, bundle_name(path), None)
    if client is None and uri is None:
        _require_store(parsed)
    client = client or registry_client(uri)
    mv = resolve_version(client, parsed)
    return Resolved(parsed, download_bundle(client, mv), mv.name, mv.version)


def _require_store(ref: ModelRef) -> None:
    """The workspace's embedded store must exist to hold a registered model: asking MLflow would create an empty
    one (in a folder outside the project, say) only to answer that the model is not there."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return
    db = workspace().mlflow_db
    if not db.is_file():
        raise MlopsError(f"no registered model '{ref.text}': the store sqlite:///{db} does not exist (nothing was "
                         "registered there); run from the project that registered it, or set MLOPS_HOME or "
                         "MLFLOW_TRACKING_URI")


def fetch_if_registered(ref: str, uri: str | None = None, client: MlflowClient | None = None) -> Resolved | None:
    """`fetch`, or None when the reference names nothing in the registry (a model with no champion yet)."""
    try:
        return fetch(ref, uri, client)
    except MlopsError:
        return None
