"""The recipe's `monitor:` section (config group `configs/monitor/`), read by `mlops monitor`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ByteSize, Field, PositiveFloat, PositiveInt, field_validator, model_validator

from mlops.core.loglimits import LogLimits
from mlops.core.timespec import parse_duration, parse_time
from mlops.recipe.section import Section

NumericMethod = Literal["psi", "ks", "wasserstein", "jensenshannon"]
CategoricalMethod = Literal["psi", "jensenshannon", "chi2"]
DriftMethod = Literal["psi", "ks", "wasserstein", "jensenshannon", "chi2"]
EmbeddingMethod = Literal["model", "mmd", "ratio"]
Share = Annotated[float, Field(ge=0, le=1)]
# what `mlops monitor` computes from joined ground truth; `accuracy.metric` must be one of them
LIVE_METRICS = {"binary": {"accuracy": "higher", "f1": "higher", "f1_macro": "higher", "auroc": "higher",
                           "calibration_error": "lower"},
                "multiclass": {"accuracy": "higher", "f1_macro": "higher", "auroc": "higher",
                               "calibration_error": "lower"},
                "regression": {"rmse": "lower", "mae": "lower", "r2": "higher"}}


def _duration(v: str) -> str:
    parse_duration(v)
    return v


class WindowConfig(Section):
    """How the prediction log is cut into windows. Every rule is judged once per window."""

    by: Literal["count", "time"] = Field("count", description="count: every `size` rows; time: every `duration`, "
                                         "aligned to the epoch (hourly windows start on the hour, UTC)")
    size: PositiveInt = Field(1000, description="rows per window (by: count)")
    duration: str = Field("1h", description="length of a window (by: time): 30m, 1h, 1d ...")
    min_samples: PositiveInt = Field(500, description="a window with fewer rows is recorded but judged by no "
                                     "rule (too few rows to tell drift from noise)")

    _d = field_validator("duration")(lambda cls, v: _duration(v))

    @model_validator(mode="after")
    def _enough(self) -> WindowConfig:
        if self.by == "count" and self.min_samples > self.size:
            raise ValueError(f"min_samples ({self.min_samples}) is above the window size ({self.size}): no window "
                             "would ever be judged")
        return self


class ReferenceConfig(Section):
    """What production is compared with: the training split the model learned from, or a known-good
    window of production traffic."""

    source: Literal["training", "production"] = Field("training", description="training: the recipe's data and "
                                                      "split, reproduced; production: the log between start and end")
    start: str | float | None = Field(None, description="production: the window's start (ISO 8601 or unix seconds)")
    end: str | float | None = Field(None, description="production: the window's end (exclusive)")
    max_rows: PositiveInt = Field(100_000, description="a larger reference is sampled (seeded) to this many rows")

    @field_validator("start", "end")
    @classmethod
    def _time(cls, v: str | float | None) -> str | float | None:
        if v is not None:
            parse_time(str(v))
        return v

    @model_validator(mode="after")
    def _window(self) -> ReferenceConfig:
        given = self.start is not None and self.end is not None
        if self.source == "production" and not given:
            raise ValueError("a production reference needs 'start' and 'end' (the known-good window of the log)")
        if self.source == "training" and (self.start is not None or self.end is not None):
            raise ValueError("'start' and 'end' choose a production window: set source: production, or drop them")
        if given and parse_time(str(self.start)) >= parse_time(str(self.end)):
            raise ValueError(f"start ({self.start}) must be before end ({self.end})")
        return self


class FeatureDriftConfig(Section):
    """One feature's own drift method and threshold, and whether its drift alone fires the drift alert."""

    method: DriftMethod | None = None
    threshold: PositiveFloat | None = None
    key: bool = Field(False, description="drift of this feature fires the drift alert on its own")
    severe: PositiveFloat | None = Field(None, description="this feature's severe threshold (null: drift.severe's "
                                         "for its method)")


class EmbeddingDriftConfig(Section):
    """Drift of an image or text model's embeddings (the bundle's `embedding` output, logged with every
    prediction), judged as Evidently's embedding drift methods judge it. Judged as one more feature named
    `embedding`; tabular models have none."""

    enabled: bool = True
    method: EmbeddingMethod = Field("model", description="model: a classifier told apart reference and window "
                                    "(ROC AUC); mmd: maximum mean discrepancy; ratio: share of drifted components")
    threshold: PositiveFloat | None = Field(None, description="null: the method's default (Evidently's)")
    key: bool = Field(True, description="its drift fires the drift alert on its own: one statistic over the whole "
                      "input, where the descriptors are many columns of the share")


class SevereDriftConfig(Section):
    """Drift large enough in one feature to fire the drift rule on its own, whatever `share` says: one badly
    shifted input of many is an incident even when the rest hold. Scores in each method's own unit; p-value
    methods have none by default (a p-value says how sure a shift is, not how large, and shrinks as windows
    grow)."""

    enabled: bool = True
    psi: PositiveFloat | None = Field(0.25, description="PSI at or above this (0.25: the usual 'significant shift')")
    jensenshannon: PositiveFloat | None = Field(0.18, description="Jensen-Shannon distance at or above this (0.18: "
                                                "what a PSI of 0.25 gives for small shifts)")
    wasserstein: PositiveFloat | None = Field(0.5, description="Wasserstein distance over the reference's standard "
                                              "deviation at or above this (0.5: a normal column shifted by half a "
                                              "deviation, PSI 0.25)")
    ks: PositiveFloat | None = Field(None, description="KS p-value at or below this; null: no severity by KS")
    chi2: PositiveFloat | None = Field(None, description="chi-square p-value below this; null: no severity by chi2")

    def threshold(self, method: str, own: float | None = None) -> float | None:
        """The severe threshold of a column judged by `method` (its own override first); None: not judged."""
        if not self.enabled:
            return None
        return own if own is not None else getattr(self, method, None)


class DriftConfig(Section):
    """Drift of every input feature, and of the predictions, against the reference.

    Distances (psi, wasserstein, jensenshannon) drift at or above their threshold; p-values (ks, chi2) at or
    below it. PSI is the default because it does not grow more sensitive with the window: KS flags
    negligible shifts at large n (a 0.02 sd shift at 100k rows), PSI and Wasserstein do not."""

    enabled: bool = True
    num_method: NumericMethod = "psi"
    cat_method: CategoricalMethod = "psi"
    num_threshold: PositiveFloat | None = Field(None, description="null: the method's default (psi, wasserstein, "
                                                "jensenshannon 0.1; ks 0.05)")
    cat_threshold: PositiveFloat | None = Field(None, description="null: the method's default (psi, "
                                                "jensenshannon 0.1; chi2 0.05)")
    share: Annotated[float, Field(gt=0, le=1)] = Field(0.5, description="the window drifts when at least this "
                                                       "share of the features drift (Evidently's drift_share)")
    severe: SevereDriftConfig = Field(default_factory=SevereDriftConfig, description="one feature drifting past "
                                      "its method's severe threshold fires the drift rule on its own")
    features: dict[str, FeatureDriftConfig] = Field(default_factory=dict, description="per-feature overrides")
    predictions: bool = Field(True, description="also watch the predictions (label and confidence, or the "
                              "regression output): rule prediction_drift")
    embedding: EmbeddingDriftConfig = Field(default_factory=EmbeddingDriftConfig)


class SchemaChecksConfig(Section):
    """Production inputs against the training data's schema (types, ranges, categories, missing rates)."""

    enabled: bool = True
    max_violation_rate: Share = Field(0.01, description="the schema rule fires when more than this share of a "
                                      "window's rows has a type error, an unseen category or an out-of-range value")
    range_margin: Annotated[float, Field(ge=0)] = Field(0.05, description="a value counts as out of range beyond "
                                                        "the training range widened by this fraction of its width "
                                                        "on each side")
    max_missing_increase: Share = Field(0.1, description="a column's missing rate may exceed its training rate by "
                                        "this much (absolute) before the schema rule fires")
    examples: PositiveInt = Field(5, description="examples kept per problem")


class AccuracyConfig(Section):
    """Live model quality from ground truth joined by prediction id, against the test metric at training time."""

    enabled: bool = True
    metric: str | None = Field(None, description="accuracy (classification) or rmse (regression) when null; "
                               "also f1, f1_macro, auroc, calibration_error, mae, r2")
    max_drop: Annotated[float, Field(ge=0)] = Field(0.05, description="how much worse than the baseline (absolute; "
                                                    "for a lower-is-better metric, how much higher) before firing")
    baseline: float | None = Field(None, description="null: the bundle's test/<metric> recorded at training time")
    min_labels: PositiveInt = Field(50, description="labelled predictions a window needs before it is judged")

    @field_validator("metric")
    @classmethod
    def _known(cls, v: str | None) -> str | None:
        known = sorted({m for task in LIVE_METRICS.values() for m in task})
        if v is not None and v not in known:
            raise ValueError(f"unknown live metric '{v}' (known: {', '.join(known)})")
        return v


class LatencyConfig(Section):
    enabled: bool = True
    percentile: Annotated[float, Field(gt=0, le=100)] = Field(99, description="the latency percentile judged")
    sla_ms: PositiveFloat = Field(100.0, description="fires when that percentile of a window's requests is above")


class ErrorRateConfig(Section):
    """Failed requests, from the server's Prometheus counters (`mlops_requests_total` by status): the prediction
    log holds answered predictions only. Scraped on each run; the rate is over requests since the last run."""

    enabled: bool = True
    metrics_url: str | None = Field(None, description="the server's /metrics URL; null: the rule is not judged")
    baseline: Share = Field(0.01, description="the error rate the service normally runs at")
    max_increase: Share = Field(0.01, description="fires above baseline + max_increase")
    count_4xx: bool = Field(False, description="count client errors (4xx) too; by default only 5xx")
    min_requests: PositiveInt = Field(100, description="requests since the last run needed to judge the rate")


class ResourcesConfig(Section):
    """The serving process's memory, from the server's /metrics (`process_resident_memory_bytes`), scraped on each
    run: a leak shows as resident memory that keeps growing. The `MlopsMemoryGrowth` alert of `mlops deploy`
    fires on the same bound over the same window."""

    enabled: bool = True
    metrics_url: str | None = Field(None, description="the server's /metrics URL; null: monitor.error_rate."
                                    "metrics_url (neither: the memory_growth rule is not judged)")
    max_memory_growth_mb: PositiveFloat = Field(512.0, description="the memory_growth rule fires when the "
                                                "server's resident memory grew by more than this many MB "
                                                "(10^6 bytes) over `window`")
    window: str = Field("1h", description="the span growth is measured over: from the oldest scrape of the "
                        "same server process within it (runs further apart: their growth scaled to it)")

    _d = field_validator("window")(lambda cls, v: _duration(v))


class AlertsConfig(Section):
    """Where a firing rule goes, and the hysteresis that keeps it from flapping."""

    log: bool = Field(True, description="print one line per alert")
    webhook: str | None = Field(None, description="POST each alert as JSON to this http(s) URL")
    webhook_timeout_s: PositiveFloat = 5.0
    prefect: bool | Literal["auto"] = Field("auto", description="emit a Prefect event (mlops.alert.<rule>) for "
                                            "automations; auto: when a Prefect API is configured or inside a flow run")
    consecutive: PositiveInt = Field(2, description="breaching windows in a row before a rule fires")
    cooldown: str = Field("6h", description="after firing, the same rule stays quiet this long (log time)")
    prometheus_textfile: str | None = Field(None, description="also write mlops_drift_detected gauges here (for "
                                            "node_exporter's textfile collector)")

    _d = field_validator("cooldown")(lambda cls, v: _duration(v))

    @field_validator("webhook")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"'{v}' is not an http(s) URL")
        return v


class ReportConfig(Section):
    evidently: bool = Field(True, description="an Evidently report (HTML + JSON) of the latest judged window")
    max_rows: PositiveInt = Field(20_000, description="rows of that window and of the reference in the Evidently "
                                  "report; beyond it both are sampled (the alerts always use every row)")
    dashboard_windows: PositiveInt = Field(500, description="latest windows shown on the dashboard")


class PayloadsConfig(Section):
    """What the prediction log keeps of an image or text input. Its descriptors and the model's embedding are
    always kept (they are what the monitor judges); the payload itself only for a sampled share, so the log
    does not grow with image bytes. Written into the bundle at export: the server follows it."""

    image_sample: Share = Field(0.05, description="share of image payloads kept (the bytes as sent, base64): "
                                "the dashboard's examples and error analysis show them")
    text_sample: Share = Field(1.0, description="share of texts kept as sent")
    max_bytes: PositiveInt = Field(65_536, description="a payload larger than this is never kept")
    embedding_dims: PositiveInt = Field(32, description="a wider embedding is logged as a fixed random projection "
                                        "to this many dimensions (the reference is projected alike)")


class RetentionConfig(Section):
    """Which rows the prediction log keeps in SQLite; the rest go to Parquet files beside it (which the monitor,
    error analysis and refresh still read) or are deleted."""

    max_age: str | None = Field("30d", description="rows older than this move out (null: no age limit)")
    max_bytes: ByteSize | None = Field("5GB", validate_default=True, description="past 90 % of this, the oldest rows move out until 80 % "
                                       "remain, so the database file stays under it (null: no size limit)")
    archive: Literal["parquet", "delete"] = Field("parquet", description="parquet: moved rows are kept as Parquet "
                                                  "files under <log>.archive/; delete: they are dropped")

    _d = field_validator("max_age")(lambda cls, v: v if v is None else _duration(v))


class LogLimitsConfig(Section):
    """How large the prediction log may grow under sustained traffic. Written into the bundle at export: the
    server's log follows it, and `mlops deploy` alerts when the log outgrows it."""

    wal_max_bytes: ByteSize | None = Field("64MB", validate_default=True, description="a write-ahead log holding "
                                           "more than this is rewound (a RESTART checkpoint: writers wait for it; "
                                           "the file is then reused from its start, so it keeps about this size "
                                           "on disk); null: only passive checkpoints, which never rewind it while "
                                           "writes go on")
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    def limits(self) -> LogLimits:
        r = self.retention
        return LogLimits(wal_max_bytes=self.wal_max_bytes, max_age_s=None if r.max_age is None else
                         parse_duration(r.max_age), max_bytes=r.max_bytes, archive=r.archive == "parquet")


class MonitorConfig(Section):
    """`mlops monitor`: drift, live accuracy, operational metrics and alerts over the prediction log."""

    log: str | None = Field(None, description="the prediction log; null: where `mlops serve` writes it "
                            "(.mlops/predictions/<model>.sqlite)")
    variants: list[str] = Field(default_factory=lambda: ["champion", "challenger"],
                                description="log rows of these variants are the model's traffic (not the shadow's; "
                                "add `stream` for the rows `mlops stream` scored)")
    window: WindowConfig = Field(default_factory=WindowConfig)
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    schema_checks: SchemaChecksConfig = Field(default_factory=SchemaChecksConfig)
    accuracy: AccuracyConfig = Field(default_factory=AccuracyConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    error_rate: ErrorRateConfig = Field(default_factory=ErrorRateConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    payloads: PayloadsConfig = Field(default_factory=PayloadsConfig)
    log_limits: LogLimitsConfig = Field(default_factory=LogLimitsConfig)
