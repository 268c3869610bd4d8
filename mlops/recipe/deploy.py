"""The recipe's `deploy:` section (config group `configs/deploy/`), read by `mlops deploy`, `rollout` and the
Prefect deployments.

One section describes every deployment target a recipe renders: the KServe InferenceService (our server in a
per-model image, or the stock Triton runtime), the serving container, the Prefect deployments of the recipe's
flows, the Prometheus alert rules, and the progressive rollout with the checks that gate each step.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from mlops.recipe.section import Section, field_errors

Target = Literal["kserve", "container", "prefect", "alerts"]
FlowName = Literal["train", "evaluate", "monitor", "retrain"]
FLOWS: tuple[FlowName, ...] = ("train", "evaluate", "monitor", "retrain")
# a Kubernetes resource quantity: 500m, 2, 1.5, 512Mi, 4Gi ...
QUANTITY = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
Quantity = Annotated[str, Field(pattern=QUANTITY)]
# a Prometheus duration: 30s, 5m, 1h, 1h30m
Duration = Annotated[str, Field(pattern=r"^([0-9]+(ms|s|m|h|d|w|y))+$")]
DNS_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"


class ImageConfig(Section):
    """The serving image `mlops deploy` renders a build context for (runtime `mlops`)."""

    repository: str = Field("ghcr.io/example/mlops-serve", description="where the image is pushed; the tag is "
                            "'<model>-v<version>', one image per model version")
    base: str = Field("python:3.11-slim", description="the base image (slim: no compilers, no torch)")
    pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"


class AutoscalingConfig(Section):
    """Replicas of the predictor: fixed when min == max, else autoscaled on `metric` towards `target`."""

    min_replicas: NonNegativeInt = Field(1, description="0 scales to zero (Knative mode only)")
    max_replicas: PositiveInt = 3
    metric: Literal["concurrency", "rps", "cpu", "memory"] = Field(
        "concurrency", description="concurrency and rps are Knative's; Standard mode scales on cpu or memory")
    target: PositiveInt = Field(10, description="in-flight requests, requests/s, or % utilisation per replica")

    @model_validator(mode="after")
    def _range(self) -> AutoscalingConfig:
        if self.min_replicas > self.max_replicas:
            raise field_errors("AutoscalingConfig", [(("min_replicas",), f"is above max_replicas "
                                                      f"({self.max_replicas})", self.min_replicas)])
        return self


class ResourcesConfig(Section):
    """Per-replica requests and limits."""

    cpu: Quantity = "500m"
    memory: Quantity = "512Mi"
    cpu_limit: Quantity | None = "1"
    memory_limit: Quantity | None = "1Gi"
    gpus: NonNegativeInt = Field(0, description="GPUs per replica (requests = limits, as Kubernetes requires)")
    gpu_resource: str = Field("nvidia.com/gpu", description="the device plugin's resource name")


class CanaryLoadTest(Section):
    """A load test of the canary before any traffic moves: its bundle served on 127.0.0.1 and driven by Locust
    (as `evaluate.load_test` does), with rows drawn from its training schema. A broken bound rolls back at once."""

    users: PositiveInt = Field(8, description="concurrent Locust users")
    rps: PositiveFloat | None = Field(None, description="target requests per second (absent: as fast as answered)")
    duration_s: Annotated[float, Field(gt=0, le=3600)] = Field(10.0, description="measured seconds")
    warmup_s: Annotated[float, Field(ge=0, le=600)] = Field(2.0, description="seconds of load not counted")
    max_p99_ms: PositiveFloat | None = Field(None, description="the largest p99 latency under this load")
    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = Field(0.0, description="the largest share of "
                                                                        "failed requests")
    min_rps: PositiveFloat | None = Field(None, description="the fewest requests per second answered")


class RolloutChecks(Section):
    """What must hold for the canary at each rollout step; a threshold left null is not checked."""

    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = Field(
        0.01, description="5xx answers / predict requests the canary answered in the step's window")
    max_p99_ms: PositiveFloat | None = Field(250.0, description="the canary's 99th-percentile request latency")
    max_shadow_disagreement: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None, description="rows where a shadow model disagreed / rows it compared (needs `mlops serve --shadow`)")
    min_requests: PositiveInt = Field(100, description="requests the canary must answer in a step before its "
                                      "checks count")
    load_test: CanaryLoadTest | None = Field(None, description="also require load-test figures of the canary "
                                             "before its first step (docs/loadtest.md)")


class RolloutConfig(Section):
    """Progressive rollout: the canary's share of traffic at each step, and when to move on."""

    steps: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1)] = Field(
        default_factory=lambda: [1, 10, 50, 100], description="canary traffic % per step, rising to 100")
    checks: RolloutChecks = Field(default_factory=RolloutChecks)
    window_s: PositiveFloat = Field(300.0, description="how long each step is observed before deciding")
    max_windows: PositiveInt = Field(3, description="windows a step may wait for `min_requests` before the "
                                     "rollout holds there")
    promote: bool = Field(True, description="move `champion` to the canary once it has passed at 100 %")

    @field_validator("steps")
    @classmethod
    def _rising_to_100(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("steps must rise strictly")
        if v[-1] != 100:
            raise ValueError("the last step must be 100 (the canary ends with all traffic)")
        return v


class AlertsConfig(Section):
    """Prometheus alert rules over the server's metrics. Their thresholds are the monitor's (`monitor.latency`,
    `monitor.error_rate`), so an alert and a `mlops monitor` finding fire on the same bound; only how Prometheus
    evaluates them is set here."""

    enabled: bool = True
    drift: bool = Field(True, description="alert while `mlops_drift_detected` (written by `mlops monitor`) flags "
                        "a feature")
    window: Duration = Field("5m", description="the rate window of each expression")
    for_: Duration = Field("10m", alias="for", description="how long a condition must hold before firing")
    severity: str = "page"


class GrafanaConfig(Section):
    """The Grafana dashboard `mlops deploy` renders beside the alert rules (OUT/grafana/): the dashboard JSON, a
    dashboard provider and the Prometheus datasource its panels query (docs/grafana.md)."""

    enabled: bool = True
    datasource_uid: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")] = Field(
        "prometheus", description="the uid of the Prometheus datasource every panel queries (provisioned with it; "
        "set it to an existing datasource's uid to use that one)")
    datasource_name: Annotated[str, Field(min_length=1)] = "Prometheus"
    datasource_url: str = Field("http://prometheus:9090", description="the Prometheus the provisioned datasource "
                                "queries (it scrapes the servers and node_exporter's drift textfile)")
    folder: str = Field("mlops", description="the Grafana folder the dashboards are provisioned into")
    dashboards_path: str = Field("/var/lib/grafana/dashboards/mlops", description="where OUT/grafana/dashboards "
                                 "is mounted in the Grafana container (the file provider reads it)")
    refresh: Duration = Field("30s", description="the dashboard's auto-refresh interval")


class FlowSchedule(Section):
    """One flow's Prefect deployment: when it runs (cron or interval, or only on demand) and with what."""

    enabled: bool = True
    cron: str | None = Field(None, description="e.g. '0 3 * * 0' (Sundays 03:00)")
    interval_s: PositiveInt | None = Field(None, description="every N seconds")
    timezone: str = "UTC"
    parameters: dict[str, Any] = Field(default_factory=dict, description="extra flow parameters")

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, v: str | None) -> str | None:
        if v is not None and len(v.split()) != 5:
            raise ValueError("a cron expression has 5 fields (minute hour day month weekday)")
        return v

    @model_validator(mode="after")
    def _one_schedule(self) -> FlowSchedule:
        if self.cron is not None and self.interval_s is not None:
            raise field_errors("FlowSchedule", [(("interval_s",), "give cron or interval_s, not both",
                                                 self.interval_s)])
        return self


class FlowsConfig(Section):
    """One Prefect deployment per flow of the recipe (entry points in `mlops.flows`)."""

    train: FlowSchedule = Field(default_factory=FlowSchedule)
    evaluate: FlowSchedule = Field(default_factory=FlowSchedule)
    monitor: FlowSchedule = Field(default_factory=FlowSchedule)
    retrain: FlowSchedule = Field(default_factory=FlowSchedule)

    def items(self) -> list[tuple[FlowName, FlowSchedule]]:
        return [(name, getattr(self, name)) for name in FLOWS]


class PrefectConfig(Section):
    """The Prefect deployments of the recipe's flows (`prefect.yaml`, `mlops deploy --prefect`)."""

    work_pool: Annotated[str, Field(min_length=1)] = "mlops"
    work_queue: str | None = None
    flows: FlowsConfig = Field(default_factory=FlowsConfig)
    tags: list[str] = Field(default_factory=lambda: ["mlops"])
    image: str | None = Field(None, description="run the flows in this image on a docker work pool (the project "
                              "at /opt/project, mlops installed) instead of a git clone on a process pool")


class PayloadLoggerConfig(Section):
    """KServe's payload logger: the agent posts each request and response as a CloudEvent to `url`, by default
    the collector `mlops deploy` renders beside the InferenceService (`mlops collect --http`), which lands them
    in the prediction log the monitor reads."""

    enabled: bool = False
    mode: Literal["all", "request", "response"] = Field("all", description="which payloads the agent sends")
    url: str | None = Field(None, description="where the agent posts; absent: the collector `mlops deploy` "
                            "renders (a Deployment and a Service)")
    log: str | None = Field(None, description="the collector's prediction log (postgresql://USER@HOST/DATABASE, "
                            "which the monitor reads too); absent: improve.refresh.log")
    replicas: PositiveInt = Field(1, description="collector replicas; more than one needs a PostgreSQL log and "
                                  "mode request or response (a pair is matched in one collector's memory)")


class KServeConfig(Section):
    """KServe-specific settings of the InferenceService."""

    logger: PayloadLoggerConfig = Field(default_factory=PayloadLoggerConfig)


class DeployConfig(Section):
    """Where and how the recipe's model is served, rolled out, orchestrated and alerted on."""

    targets: list[Target] = Field(default_factory=lambda: ["kserve", "container", "prefect", "alerts"],
                                  description="what `mlops deploy` renders")
    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] | None = Field(
        None, description="the InferenceService's name; the model name in DNS form when absent")
    namespace: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] = "default"
    runtime: Literal["mlops", "triton"] = Field(
        "mlops", description="mlops: our server over the bundle, in a per-model image; triton: KServe's stock "
                             "kserve-tritonserver runtime over the ONNX model (Triton repository layout)")
    mode: Literal["Knative", "Standard"] = Field(
        "Knative", description="KServe deployment mode; canaries use canaryTrafficPercent (Knative) or "
                               "spec.canary[] (Standard)")
    protocol: Literal["v1", "v2"] = "v2"
    storage_uri: str | None = Field(None, description="prefix of model storage, e.g. s3://bucket/models; a "
                                    "version lives at <prefix>/<model>/v<version> (required by triton)")
    image: ImageConfig = Field(default_factory=ImageConfig)
    port: Annotated[int, Field(ge=1024, le=65535)] = Field(8080, description="the serving container's port")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    grafana: GrafanaConfig = Field(default_factory=GrafanaConfig)
    prefect: PrefectConfig = Field(default_factory=PrefectConfig)
    kserve: KServeConfig = Field(default_factory=KServeConfig)

    @model_validator(mode="after")
    def _consistent(self) -> DeployConfig:
        problems = self.problems()
        if problems:
            raise field_errors("DeployConfig", problems)
        return self

    def problems(self) -> list[tuple[tuple[str, ...], str, Any]]:
        """Cross-field rules the schema's types cannot express: (field path, why, value) for each one broken."""
        out: list[tuple[tuple[str, ...], str, Any]] = []
        if self.runtime == "triton" and self.protocol != "v2":
            out.append((("protocol",), "runtime 'triton' serves ONNX over the V2 protocol only: set protocol: v2",
                        self.protocol))
        if self.runtime == "triton" and not self.storage_uri:
            out.append((("storage_uri",), "runtime 'triton' loads the model from storage: set storage_uri "
                        "(e.g. s3://bucket/models)", self.storage_uri))
        if self.runtime == "mlops" and self.resources.gpus:
            out.append((("resources", "gpus"), "runtime 'mlops' runs ONNX Runtime on CPU: GPUs need runtime: "
                        "triton", self.resources.gpus))
        if self.mode == "Standard" and self.autoscaling.metric in ("concurrency", "rps"):
            out.append((("autoscaling", "metric"), "concurrency and rps autoscaling need Knative mode; Standard "
                        "mode scales on cpu or memory", self.autoscaling.metric))
        if self.mode == "Standard" and self.autoscaling.min_replicas == 0:
            out.append((("autoscaling", "min_replicas"), "scale to zero needs Knative mode", 0))
        logger = self.kserve.logger
        # collectors pair a request with its response in memory: replicas share only a PostgreSQL log (SQLite
        # is one file in one pod), and a pair split over two replicas is written as two half rows
        if logger.enabled and logger.url is None and logger.replicas > 1 and not (logger.log or "").startswith(
                ("postgresql://", "postgres://")):
            out.append((("kserve", "logger", "replicas"), "several collectors need a PostgreSQL log: set "
                        "kserve.logger.log to postgresql://USER@HOST/DATABASE, or replicas: 1", logger.replicas))
        if logger.enabled and logger.url is None and logger.replicas > 1 and logger.mode == "all":
            out.append((("kserve", "logger", "replicas"), "mode 'all' pairs each request with its response in "
                        "one collector: with several replicas a pair splits; set replicas: 1 (or mode request or "
                        "response)", logger.replicas))
        return out
