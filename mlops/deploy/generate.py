"""`mlops deploy RECIPE`: every deployment artefact of one model version, from the recipe's `deploy:` section.

    OUT/inferenceservice.yaml   KServe InferenceService (validated: CRD schema when given, KServe's rules)
    OUT/image/                  build context of the serving image (runtime mlops): Dockerfile, bundle, ...
    OUT/collector.yaml          the collector of KServe's payload logger (`deploy.kserve.logger`, without a url)
    OUT/triton/<name>/          Triton repository (runtime triton): config.pbtxt, 1/model.onnx
    OUT/prefect.yaml            Prefect deployments of the recipe's flows (cloned from the project's git remote)
    OUT/alerts.rules.yml        Prometheus alert rules (checked by promtool when installed)
    OUT/grafana/                a Grafana dashboard over the same series, with its provisioning files (`alerts`
                                target, `deploy.grafana`)
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from mlops.core.atomic import write_json, write_text
from mlops.core.errors import MlopsError
from mlops.core.predlog_store import is_log_url, log_name
from mlops.core.refs import ModelVersion, fetch
from mlops.core.registry import tracking_uri
from mlops.core.workspace import workspace
from mlops.deploy.alerts import FILENAME, alert_rules, promtool_check
from mlops.deploy.container import build_context
from mlops.deploy.grafana import write_grafana
from mlops.deploy.kserve import collector_manifest, image_for, inference_service, storage_for
from mlops.deploy.kubectl import kubectl_apply
from mlops.deploy.orchestration import code_source, flow_deployments, prefect_yaml, register
from mlops.deploy.triton import build_repository
from mlops.deploy.validate import crd_path, validate_manifest
from mlops.recipe.deploy import DeployConfig


def project_relative(path: Path, project_dir: Path) -> str:
    """The recipe path as flows running in `project_dir` should see it."""
    try:
        return str(path.resolve().relative_to(project_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def render_manifest(cfg: DeployConfig, mv: ModelVersion, crd: Path | None) -> str:
    text = inference_service(cfg, mv)
    validate_manifest(text, crd)
    return text


def deploy_recipe(loaded: Any, model: str | None = None, out: Path | None = None, crd: Path | None = None,
                  targets: list[str] | None = None, project_dir: Path | None = None, register_prefect: bool = False,
                  apply: bool = False, git_repo: str | None = None, git_ref: str | None = None,
                  local_checkout: bool = False, image: str | None = None) -> dict[str, Any]:
    """Render (and check) the recipe's deployment targets for `model` (default: the recipe model's champion).
    The Prefect deployments clone the project from `git_repo` (default: its remote `origin`) at `git_ref`
    (default: the commit checked out), or run in `project_dir` on this machine with `local_checkout`, or in the
    container `image` (with the project baked in) on a docker work pool."""

    r = loaded.recipe
    cfg: DeployConfig = r.deploy
    wanted = list(targets or cfg.targets)
    unknown = sorted(set(wanted) - {"kserve", "container", "prefect", "alerts"})
    if unknown:
        raise MlopsError(f"unknown deploy target(s) {', '.join(unknown)}: choose from kserve, container, prefect, "
                         "alerts")
    if register_prefect and "prefect" not in wanted:
        wanted.append("prefect")
    if apply and "kserve" not in wanted:
        raise MlopsError("--apply applies the InferenceService: include the kserve target")
    crd = crd_path(crd)
    needs_model = bool({"kserve", "container"} & set(wanted))
    resolved = fetch(model or f"{r.model_name}@champion", tracking_uri(r.tracking.uri)) if needs_model else None
    mv, bundle = (resolved.model_version(), resolved.path) if resolved else (None, None)
    out = out or workspace().deploy_dir(r.model_name, mv.label if mv else "flows")
    out.mkdir(parents=True, exist_ok=True)
    project_dir = (project_dir or Path.cwd()).resolve()
    result: dict[str, Any] = {"recipe": r.name, "model": mv.ref if mv else None, "out": str(out), "files": {},
                              "checks": {}, "next": [], "warnings": []}
    again = " ".join(["mlops deploy", *map(shlex.quote, [loaded.composed.display, *loaded.overrides])])  # in a hint
    if "kserve" in wanted and mv is not None and bundle is not None:
        result["files"]["inferenceservice"] = str(write_text(out / "inferenceservice.yaml", render_manifest(cfg, mv, crd)))
        result["checks"]["inferenceservice"] = f"valid against {crd} and KServe's rules"
        logger = cfg.kserve.logger
        if logger.enabled and logger.url is None:
            log = logger.log or r.improve.refresh.log
            if not log:
                raise MlopsError("deploy.kserve.logger renders a collector: set deploy.kserve.logger.log (or "
                                 "improve.refresh.log) to the prediction log it writes, e.g. "
                                 "postgresql://USER@HOST/DATABASE")
            if not is_log_url(log):
                result["warnings"].append(f"the collector writes the SQLite log {log_name(log)} inside its pod: only "
                                          "what mounts that volume reads it; a postgresql:// log is shared")
            result["files"]["collector"] = str(write_text(out / "collector.yaml", collector_manifest(cfg, mv, log)))
            result["next"].append(f"run the collector: kubectl apply -n {cfg.namespace} -f {out / 'collector.yaml'}")
        if cfg.runtime == "triton":
            repo = build_repository(out / "triton", bundle, mv)
            result["files"]["triton_repository"] = str(repo)
            result["next"].append(f"upload the model:  aws s3 sync {repo} {storage_for(cfg, mv)}  (or gsutil rsync)")
    if "container" in wanted and mv is not None and bundle is not None:
        ctx = build_context(out / "image", bundle, cfg, mv)
        result["files"]["image_context"] = str(ctx)
        result["image"] = image_for(cfg, mv)
        result["next"].append(f"build the image:   docker build -t {image_for(cfg, mv)} {ctx} && "
                              f"docker push {image_for(cfg, mv)}")
    if "prefect" in wanted:
        events = [f"mlops.alert.{rule}" for rule in ("drift", "accuracy_drop") if getattr(r.improve.triggers, rule)]
        source = code_source(project_dir, git_repo, git_ref, local=local_checkout, image=image or cfg.prefect.image)
        result["code"] = source.describe()
        result["warnings"].extend(source.warnings)
        recipe_path = project_relative(loaded.path, project_dir)
        if source.kind == "git" and Path(recipe_path).is_absolute():
            result["warnings"].append(f"the recipe {recipe_path} is outside the project directory {project_dir}: "
                                      "workers clone only the project's repository; deploy from the project (or "
                                      "pass --project-dir)")
        deployments = flow_deployments(cfg.prefect, r.name, r.model_name, recipe_path, loaded.overrides,
                                       retrain_events=events)
        prefect_file = write_text(out / "prefect.yaml", prefect_yaml(deployments, r.name, source))
        result["files"]["prefect"] = str(prefect_file)
        result["deployments"] = [d.full_name for d in deployments]
        if register_prefect:
            result["registered"] = register(prefect_file, deployments, project_dir,
                                            pool_type="docker" if source.kind == "image" else "process")
            result["next"].append(f"run a worker:      prefect worker start --pool {cfg.prefect.work_pool}")
        else:
            result["next"].append(f"register flows:    (cd {project_dir} && prefect deploy --all --prefect-file "
                                  f"{prefect_file})  or  {again} --prefect")
    if "alerts" in wanted and cfg.alerts.enabled:
        rules = write_text(out / FILENAME, alert_rules(cfg.alerts, r.monitor, r.model_name))
        result["files"]["alerts"] = str(rules)
        checked = promtool_check(rules)
        result["checks"]["alerts"] = checked.splitlines()[-1].strip() if checked else "promtool not installed"
    if "alerts" in wanted and cfg.grafana.enabled:
        grafana = write_grafana(out, cfg, r.monitor, r.model_name)
        result["files"]["grafana"] = str(grafana["dashboard"].parent.parent)
        result["next"].append(f"load the dashboard: mount {grafana['provisioning']} at /etc/grafana/provisioning "
                              f"and {grafana['dashboard'].parent} at {cfg.grafana.dashboards_path}")
    if apply:
        result["applied"] = kubectl_apply(Path(result["files"]["inferenceservice"]), cfg.namespace)
    elif "inferenceservice" in result["files"]:
        result["next"].append(f"deploy it:         kubectl apply -n {cfg.namespace} -f "
                              f"{result['files']['inferenceservice']}  (or {again} --apply)")
    write_json(out / "deploy.json", result)
    return result
