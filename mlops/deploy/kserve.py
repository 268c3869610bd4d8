"""The KServe InferenceService of a recipe's model: the stable predictor, and a canary at some percentage.

Two flavours (`deploy.runtime`): `mlops` runs our server over the bundle in a per-model image
(`<image.repository>:<model>-v<version>`, built from the context `mlops deploy` writes); `triton` uses KServe's
stock `kserve-tritonserver` runtime with `modelFormat: onnx`, protocol v2, over the Triton repository layout
stored at `<storage_uri>/<model>/v<version>`.
"""

from __future__ import annotations

from typing import Any

from mlops.core.refs import ModelVersion, dns_name
from mlops.deploy.render import render
from mlops.recipe.deploy import DeployConfig


def service_name(cfg: DeployConfig, model: str) -> str:
    return cfg.name or dns_name(model)


def image_for(cfg: DeployConfig, mv: ModelVersion) -> str:
    return f"{cfg.image.repository}:{mv.tag}"


def storage_for(cfg: DeployConfig, mv: ModelVersion) -> str | None:
    """Where the Triton repository of this version lives (its `<name>/1/model.onnx` below)."""
    return f"{cfg.storage_uri.rstrip('/')}/{mv.name}/{mv.label}" if cfg.storage_uri else None


def _resources(cfg: DeployConfig) -> dict[str, dict[str, str]]:
    r = cfg.resources
    requests = {"cpu": r.cpu, "memory": r.memory}
    limits = {k: v for k, v in (("cpu", r.cpu_limit), ("memory", r.memory_limit)) if v is not None}
    if r.gpus:  # Kubernetes takes extended resources in limits; requests must equal them
        requests[r.gpu_resource] = str(r.gpus)
        limits[r.gpu_resource] = str(r.gpus)
    return {"requests": requests, "limits": limits}


def predictor_values(cfg: DeployConfig, mv: ModelVersion, autoscale: bool = True) -> dict[str, Any]:
    """What the template needs for one predictor. `autoscale=False` (Standard-mode canaries, which KServe does
    not autoscale) pins the replica count at `min_replicas` (at least 1)."""
    a = cfg.autoscaling
    return {
        "runtime": cfg.runtime, "model": mv.name, "version": mv.version, "protocol": cfg.protocol,
        "image": image_for(cfg, mv), "pull_policy": cfg.image.pull_policy, "port": cfg.port,
        "storage_uri": storage_for(cfg, mv), "resources": _resources(cfg),
        "autoscaling": a.model_dump() if autoscale else None, "replicas": max(a.min_replicas, 1),
        "logger": logger_values(cfg, mv.name),
    }


COLLECTOR_PORT = 8080


def collector_name(cfg: DeployConfig, model: str) -> str:
    return f"{service_name(cfg, model)}-collector"[:63]


def logger_values(cfg: DeployConfig, model: str) -> dict[str, str] | None:
    """`spec.predictor.logger`: where KServe's agent posts each payload (the rendered collector by default)."""
    logger = cfg.kserve.logger
    if not logger.enabled:
        return None
    url = logger.url or f"http://{collector_name(cfg, model)}.{cfg.namespace}.svc.cluster.local/"
    return {"mode": logger.mode, "url": url}


def collector_manifest(cfg: DeployConfig, mv: ModelVersion, log: str) -> str:
    """The collector's Deployment and Service: `mlops collect --http` in the serving image, into `log`."""
    return render("collector.yaml.j2", name=collector_name(cfg, mv.name), namespace=cfg.namespace, model=mv.name,
                  image=image_for(cfg, mv), pull_policy=cfg.image.pull_policy, port=COLLECTOR_PORT, log=log,
                  replicas=cfg.kserve.logger.replicas)


def inference_service(cfg: DeployConfig, stable: ModelVersion, canary: ModelVersion | None = None,
                      percent: int | None = None) -> str:
    """The InferenceService YAML: `stable` alone, or with `canary` taking `percent` % of traffic."""
    canary_values = None
    if canary is not None:
        if percent is None:
            raise ValueError("a canary needs its traffic percent")
        canary_values = {"percent": percent,
                         "predictor": predictor_values(cfg, canary, autoscale=cfg.mode == "Knative")}
    return render("inferenceservice.yaml.j2", name=service_name(cfg, stable.name), namespace=cfg.namespace,
                  mode=cfg.mode, stable=predictor_values(cfg, stable), canary=canary_values)
