"""What `mlops monitor` produces, typed: one rule's observation of a window, a window's summary (and its one-line
brief), an alert record, Evidently's report and the whole run's result.

Each has one plain-JSON form, and the formats others read are those forms, unchanged: the store keeps a
summary's `record()` and an alert's `payload()`; the dashboard draws those records; `--json` prints the result
by its fields (`mlops.cli.output.emit`). The sections of a summary that its own modules compute (drift, schema,
quality, operations, distributions, errors) stay the dicts those modules return: they are stored and drawn as
they are, and a new key there needs no change here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class Observation:
    """One rule on one window: its value against its threshold."""

    rule: str
    value: float | None
    threshold: float | None
    breach: bool | None  # None: not judged on this window
    reason: str = ""  # why not judged, or what breached
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WindowBrief:
    """A window in a line: what the CLI prints and the result lists."""

    index: int
    start: str
    end: str
    rows: int
    judged: bool
    drifted_features: list[str]
    drift_share: float | None
    labelled: int
    metrics: dict[str, float]
    latency_ms: dict[str, float] | None
    schema_violation_rate: float | None
    breaches: list[str]


# sections a window may lack (drift or schema checks off, no error counters scraped): absent from the record,
# as they always were in the store, rather than null
_OPTIONAL_SECTIONS = ("drift", "schema", "errors", "examples")


@dataclass
class WindowSummary:
    """One window, judged: its bounds in log time and rowids, and each check's section."""

    index: int  # 0-based within this run's read
    start_ts: float
    end_ts: float
    start_iso: str
    end_iso: str
    start_rowid: int
    end_rowid: int
    rows: int
    judged: bool  # enough rows for the rules (monitor.window.min_samples)
    versions: list[str]
    drift: dict[str, Any] | None = None  # columns, dataset, predictions
    schema: dict[str, Any] | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    operations: dict[str, Any] = field(default_factory=dict)
    distributions: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, Any] | None = None  # the server's error rate: the latest window of a live run only
    rules: list[Observation] = field(default_factory=list)
    # a drifted window of an image or text model: a few of its inputs as kept by the log (column, kind,
    # rowid, value: base64 image or text)
    examples: list[dict[str, Any]] | None = None

    def record(self) -> dict[str, Any]:
        """As the store keeps it and the dashboard draws it (the sections are shared, not copied)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["rules"] = [o.as_dict() for o in self.rules]
        return {k: v for k, v in out.items() if not (v is None and k in _OPTIONAL_SECTIONS)}

    def brief(self) -> WindowBrief:
        ds = (self.drift or {}).get("dataset") or {}
        return WindowBrief(index=self.index, start=self.start_iso, end=self.end_iso, rows=self.rows,
                           judged=self.judged, drifted_features=ds.get("drifted_columns", []),
                           drift_share=ds.get("share"), labelled=self.quality.get("labelled", 0),
                           metrics=self.quality.get("metrics", {}), latency_ms=self.operations.get("latency_ms"),
                           schema_violation_rate=(self.schema or {}).get("violation_rate"),
                           breaches=[o.rule for o in self.rules if o.breach])


@dataclass
class AlertWindow:
    """The window an alert fired or resolved on."""

    index: int
    start: float  # log time
    end: float
    start_iso: str
    end_iso: str
    rows: int
    first_rowid: int
    last_rowid: int


@dataclass
class AlertRecord:
    """A rule firing or resolving: what is recorded, sent to every channel and listed in the result."""

    rule: str
    state: str  # fired | resolved
    event: str  # mlops.alert.<rule> | mlops.resolved.<rule>
    model: str
    version: str | None
    value: float | None
    threshold: float | None
    reason: str
    window: AlertWindow
    consecutive: int  # breaching windows in a row the rule needed
    detail: dict[str, Any]
    dashboard: str  # the page that shows it
    log: str
    id: int | None = None  # the store's row, once recorded (a backtest records nothing)
    delivery: dict[str, Any] | None = None  # each channel's outcome, once sent

    def payload(self) -> dict[str, Any]:
        """The alert itself, as the store's `payload` column keeps it (its id and delivery are columns there)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("id", "delivery")}
        out["window"] = asdict(self.window)
        return out


@dataclass
class FirstFiring:
    """Where a backtest says a rule would first have fired."""

    window: int
    start: str
    end: str
    value: float | None
    threshold: float | None


@dataclass
class EvidentlyReport:
    """Evidently's report of the latest judged window, and whether it agrees with the fast path."""

    html: str
    json: str
    window: int
    rows: int
    reference_rows: int
    sampled: bool
    # set only when neither side was sampled: a sampled report cannot be held to the fast path's verdicts
    agrees_with_fast_path: bool | None = None
    disagreements: list[str] | None = None
    quality: dict[str, str] | None = None  # the classification or regression preset: html and json
    # labelled rows the quality report left out, by label: their truth is no class of the model (feedback said '7')
    unknown_labels: dict[str, int] | None = None
    # an image or text model: Evidently's embedding drift of the same rows (method, threshold, score, drift) and
    # whether its verdict is the fast path's
    embedding: dict[str, Any] | None = None


@dataclass
class MonitorResult:
    """What a run judged, fired and wrote: a `LiveResult` or a `BacktestResult`. `--json` prints it by these
    names."""

    model: str
    version: str | None
    bundle: str
    log: str
    backtest: bool
    reference: dict[str, Any]  # source, description, rows, notes
    baseline: dict[str, Any]  # the accuracy rule's metric, value, direction and source
    notes: list[str]
    windows: list[WindowBrief]
    pending_rows: int  # read but waiting for their window to fill
    alerts: list[AlertRecord]
    fired: list[str]  # the rules that fired in this run
    store: str
    dashboard: str  # the page this run wrote


@dataclass
class LiveResult(MonitorResult):
    """A live run: its alerts recorded and sent, `dashboard.html` redrawn from the store."""

    evidently: EvidentlyReport | None = None  # None: no new judged window, or the report is off


@dataclass
class BacktestResult(MonitorResult):
    """A replay: nothing recorded or sent; a JSON record and, beside it, the one page (`dashboard`)."""

    first_fired: dict[str, FirstFiring]  # rule: where it would first have fired
    report: str  # the JSON record of every window and alert
    report_html: str  # the page: the same file as `dashboard`
