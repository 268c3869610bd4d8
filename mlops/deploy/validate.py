"""Check a rendered InferenceService before anyone applies it.

1. The CRD's OpenAPI schema, made strict the way `kubectl apply --validate=strict` is: unknown fields are
   errors (`additionalProperties: false` on every object schema with `properties`, unless it preserves unknown
   fields), and `x-kubernetes-int-or-string` becomes `anyOf: [integer, string]`.
2. KServe's admission rules the schema does not express: exactly one predictor implementation; ONNX on
   Triton needs protocol v2; canary traffic within 0-100 %; each deployment mode's own canary form
   (`canaryTrafficPercent` in Knative mode, `spec.canary[]` in Standard mode); no autoscaling on a
   Standard-mode canary.

Every problem names the field path (`spec.predictor.containers[0].imagePullPolicy`).
"""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path
from typing import Any

from mlops.core.atomic import write_json
from mlops.core.errors import MlopsError
from mlops.core.workspace import workspace

CRD_ENV = "MLOPS_KSERVE_CRD"
# KServe's InferenceService CRD, unchanged (see crd/NOTICE): what manifests are checked against by default
BUNDLED_CRD = Path(__file__).with_name("crd") / "serving.kserve.io_inferenceservices.yaml"
IMPLEMENTATIONS = ("model", "containers", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "pmml",
                   "lightgbm", "paddle", "huggingface")
AUTOSCALING_FIELDS = ("autoScaling", "scaleMetric", "scaleMetricType", "scaleTarget", "maxReplicas")
MODES = {"Knative": "Knative", "Serverless": "Knative", "Standard": "Standard", "RawDeployment": "Standard"}
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"


class ManifestError(MlopsError):
    """A rendered manifest that KServe would refuse: every problem with its field path."""

    def __init__(self, what: str, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = [f"{what} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
        lines += [f"  {path}: {message}" for path, message in problems]
        super().__init__("\n".join(lines))


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items()}
        if out.pop("x-kubernetes-int-or-string", False):
            for key in ("type", "anyOf"):
                out.pop(key, None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def _strict_schema(crd_path: str, version: str) -> dict[str, Any]:
    """The CRD's schema made strict. Parsing the 2 MB CRD takes seconds, so the result is kept as JSON under
    .mlops/cache/kserve-crd/, keyed by the file's content: a changed CRD is a new key."""
    import hashlib
    import json

    import yaml


    try:
        raw = Path(crd_path).read_bytes()
    except OSError as exc:
        raise MlopsError(f"cannot read the KServe CRD {crd_path}: {exc.strerror}") from None
    cached = workspace().crd_schema(f"{hashlib.sha256(raw).hexdigest()[:24]}-{version}")
    if cached.is_file():
        return json.loads(cached.read_text())
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load(raw, Loader=loader)
    try:
        versions = crd["spec"]["versions"]
        schema = next(v for v in versions if v["name"] == version)["schema"]["openAPIV3Schema"]
    except (KeyError, TypeError, StopIteration):
        raise MlopsError(f"{crd_path} is not the InferenceService CRD with version {version} (expected "
                         "serving.kserve.io_inferenceservices.yaml from KServe's config/crd/)") from None
    schema = _strict(copy.deepcopy(schema))
    # metadata is `type: object` in a CRD (the API server checks ObjectMeta itself): check what we render
    schema["properties"]["metadata"] = {
        "type": "object", "required": ["name"],
        "properties": {"name": {"type": "string", "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                       "namespace": {"type": "string"},
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                       "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
        "additionalProperties": False}
    write_json(cached, schema, indent=None)
    return schema


@cache
def _validator(crd_path: str, version: str) -> Any:
    import jsonschema

    return jsonschema.Draft202012Validator(_strict_schema(crd_path, version))


def crd_path(given: str | Path | None) -> Path:
    """`--crd PATH`, else $MLOPS_KSERVE_CRD, else the InferenceService CRD of the KServe release this version of
    mlops targets (shipped with it)."""
    path = given or os.environ.get(CRD_ENV)
    return Path(path) if path else BUNDLED_CRD


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(root)"


def schema_problems(manifest: dict[str, Any], crd: Path) -> list[tuple[str, str]]:
    validator = _validator(str(crd), str(manifest.get("apiVersion", "")).rpartition("/")[2] or "v1beta1")
    problems = []
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path))):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":  # name the unknown key itself, not its parent
            allowed = set(error.schema.get("properties") or {})
            for key in sorted(set(error.instance) - allowed):
                problems.append((_path([*path, key]), f"unknown field (valid: {', '.join(sorted(allowed))})"))
            continue
        problems.append((_path(path), error.message))
    return problems


def rule_problems(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """KServe's admission rules that the OpenAPI schema cannot say."""
    problems: list[tuple[str, str]] = []
    spec = manifest.get("spec") or {}
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    raw_mode = annotations.get(MODE_ANNOTATION)
    mode = MODES.get(raw_mode) if raw_mode is not None else None
    if raw_mode is not None and mode is None:
        problems.append((f"metadata.annotations.{MODE_ANNOTATION}",
                         f"unknown deployment mode {raw_mode!r} (Knative or Standard)"))
    predictors = [("spec.predictor", spec.get("predictor"))]
    canaries = spec.get("canary") or []
    predictors += [(f"spec.canary[{i}].predictor", c.get("predictor")) for i, c in enumerate(canaries)
                   if isinstance(c, dict)]
    for where, p in predictors:
        if not isinstance(p, dict):
            problems.append((where, "is required"))
            continue
        chosen = [k for k in IMPLEMENTATIONS if p.get(k)]
        if len(chosen) != 1:
            problems.append((where, "needs exactly one predictor implementation (model, containers, or one "
                             f"framework), found {len(chosen)}: {', '.join(chosen) or 'none'}"))
        model = p.get("model") or {}
        fmt = str((model.get("modelFormat") or {}).get("name", "")).lower()
        if fmt == "onnx" and "triton" in str(model.get("runtime", "")) and model.get("protocolVersion") != "v2":
            problems.append((f"{where}.model.protocolVersion", "ONNX on the Triton runtime needs protocolVersion "
                             f"v2, got {model.get('protocolVersion')!r}"))
    predictor = spec.get("predictor") if isinstance(spec.get("predictor"), dict) else {}
    traffic = predictor.get("canaryTrafficPercent")
    if traffic is not None:
        if not isinstance(traffic, int) or not 0 <= traffic <= 100:
            problems.append(("spec.predictor.canaryTrafficPercent", f"must be a percentage 0-100, got {traffic!r}"))
        if mode == "Standard":
            problems.append(("spec.predictor.canaryTrafficPercent", "works in Knative mode only; Standard mode "
                             "takes canaries in spec.canary[]"))
    if canaries:
        if mode == "Knative":
            problems.append(("spec.canary", "is for Standard mode; Knative mode takes "
                             "spec.predictor.canaryTrafficPercent"))
        total = sum(c.get("trafficPercent", 0) for c in canaries if isinstance(c, dict)
                    and isinstance(c.get("trafficPercent", 0), int))
        if total > 100:
            problems.append(("spec.canary", f"canary traffic adds up to {total} %, over 100 %"))
        if mode == "Standard":
            for i, c in enumerate(canaries):
                p = c.get("predictor") if isinstance(c, dict) else None
                for key in AUTOSCALING_FIELDS if isinstance(p, dict) else ():
                    if key in p:
                        problems.append((f"spec.canary[{i}].predictor.{key}", "Standard-mode canaries are not "
                                         "autoscaled: give minReplicas only"))
    return problems


def validate_manifest(manifest: dict[str, Any] | str, crd: Path | None, what: str = "InferenceService") -> None:
    """Raise ManifestError naming every problem's field path; the CRD schema check needs `crd`."""
    if isinstance(manifest, str):
        import yaml

        manifest = yaml.safe_load(manifest)
    if not isinstance(manifest, dict):
        raise ManifestError(what, [("(root)", "is not a mapping")])
    problems = (schema_problems(manifest, crd) if crd is not None else []) + rule_problems(manifest)
    if problems:
        raise ManifestError(what, problems)
