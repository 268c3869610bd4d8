"""The recipe's `improve:` section (config group `configs/improve/`), read by `mlops retrain` and its kin.

What starts a retrain (`triggers`), which rows it learns from (`refresh`, `feedback`), how it trains (`retrain`),
who decides on the new model (`promotion`), how it reaches production (`rollout`), and how often all this may
happen (`limits`). `ab` holds the defaults of `mlops ab report`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from mlops.recipe.section import Section

Share = Annotated[float, Field(ge=0, le=1)]


class TriggersConfig(Section):
    """What may start `mlops retrain`. Alerts come from the monitor (its records under .mlops/monitor/ and its
    Prefect events `mlops.alert.drift` / `mlops.alert.accuracy_drop`); the schedule itself is the retrain
    flow's `deploy.prefect.flows.retrain.cron` (configured once, there)."""

    drift: bool = Field(True, description="retrain on the monitor's drift alert")
    accuracy_drop: bool = Field(True, description="retrain on the monitor's accuracy-drop alert (from ground truth)")
    schedule: bool = Field(True, description="let a scheduled run of the retrain flow retrain (the cron is "
                           "deploy.prefect.flows.retrain.cron)")
    manual: bool = Field(True, description="allow `mlops retrain --reason ...` by hand")


class OutcomeConfig(Section):
    """Implicit feedback: a field the application reports after the fact (e.g. `converted`, `churned`) that
    stands for a label."""

    field: str = Field(description="the feedback field, top level or under 'outcome' (e.g. converted)")
    labels: dict[str, str] = Field(default_factory=dict, description="outcome value -> label, e.g. "
                                   "{'true': '1', 'false': '0'}; values are compared as lower-case text; "
                                   "empty: the outcome is not a label (only a business metric)")


class FeedbackConfig(Section):
    """How feedback in the prediction log becomes a label. A corrected `label` (or `value`) always counts."""

    thumbs: bool = Field(True, description="thumbs up: the served label was right; thumbs down: it was wrong "
                         "(a label only for binary tasks, where the other class is the truth)")
    outcome: OutcomeConfig | None = None


class QualityConfig(Section):
    """Production rows that are left out of training (each one counted in the refresh report)."""

    max_missing_share: Share = Field(0.5, description="drop a row with more than this share of its features missing")
    max_abs_z: PositiveFloat | None = Field(None, description="drop a row with a numeric feature further than "
                                            "this many reference standard deviations from the reference mean; "
                                            "null: keep them (drifted rows are what retraining is for)")


class RefreshConfig(Section):
    """The data a retrain learns from: the recipe's own data plus labelled production rows (prediction log joined
    with feedback by prediction id), written as one new data file with its own fingerprint."""

    reference: bool = Field(True, description="include the recipe's own data")
    production: bool = Field(True, description="include labelled rows from the prediction log")
    log: str | None = Field(None, description="the prediction log: a SQLite path (default "
                            ".mlops/predictions/<model>.sqlite) or postgresql://USER@HOST/DATABASE")
    window_days: PositiveFloat = Field(30, description="only predictions made in the last this many days")
    min_production_rows: Annotated[int, Field(ge=0)] = Field(1, description="skip the retrain when fewer labelled "
                                                              "production rows are available")
    max_production_share: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5, description="production rows are at most this share of the refreshed data (the newest are kept)")
    quality: QualityConfig = Field(default_factory=QualityConfig)

    @model_validator(mode="after")
    def _some_data(self) -> RefreshConfig:
        if not self.reference and not self.production:
            raise ValueError("a refresh needs the reference data, production rows, or both")
        if not self.reference and self.max_production_share < 1:
            raise ValueError("without reference data every row is a production row: set max_production_share: 1")
        return self


class RetrainConfig(Section):
    mode: Literal["same", "sweep"] = Field("same", description="same: the recipe's hyperparameters; sweep: the "
                                           "recipe's `sweep:` study on the refreshed data")
    budget: PositiveInt = Field(10, description="sweep mode: trials")


class PromotionConfig(Section):
    """Who decides, once the gates passed. `approval_when_uncertain`: promote when every `vs: champion` gate's
    interval lies on the better side of zero, stop when one lies on the worse side, ask a human otherwise."""

    policy: Literal["auto", "require_approval", "approval_when_uncertain"] = "approval_when_uncertain"


class ShadowStageConfig(Section):
    """The challenger answers nothing and sees every request (`mlops serve ... --shadow`)."""

    enabled: bool = True
    min_rows: PositiveInt = Field(200, description="shadow predictions needed before deciding")
    max_disagreement: Share = Field(0.3, description="largest share of rows where it answers unlike the served model")
    timeout_s: PositiveFloat = Field(900, description="give up (and roll back) when the rows have not come by then")


class RolloutConfig(Section):
    """How an accepted challenger becomes champion. staged: the shadow window, then the canary steps of
    `deploy.rollout` (steps and checks, configured once, there), then champion; rolled back at the first stage
    that fails. direct: champion at once, without live evidence."""

    mode: Literal["staged", "direct"] = "staged"
    shadow: ShadowStageConfig = Field(default_factory=ShadowStageConfig)
    max_accuracy_drop: Share = Field(0.02, description="shadow and canary, on rows with ground truth: the largest "
                                     "tolerated drop in accuracy vs the champion, when the data show it")
    poll_s: PositiveFloat = Field(2.0, description="how often a stage looks for new evidence")


class LimitsConfig(Section):
    """Enforced from the audit log, whatever started the retrain (`--force` overrides, and says so there)."""

    cooldown_minutes: Annotated[float, Field(ge=0)] = Field(360, description="least time between two retrains")
    max_per_day: PositiveInt = Field(4, description="most retrains in any 24 hours")


class AbConfig(Section):
    """Defaults of `mlops ab report`."""

    metric: Literal["accuracy", "error_rate", "mae", "mse"] = "accuracy"
    business_metric: str | None = Field(None, description="a numeric or true/false feedback field averaged per arm, "
                                        "e.g. converted")
    min_effect: PositiveFloat = Field(0.02, description="the smallest difference worth detecting (absolute)")
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    power: Annotated[float, Field(gt=0.5, lt=1)] = 0.8


class ImproveConfig(Section):
    """Continuous improvement: triggers, data refresh, retraining, promotion decision, rollout, limits."""

    triggers: TriggersConfig = Field(default_factory=TriggersConfig)
    refresh: RefreshConfig = Field(default_factory=RefreshConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    ab: AbConfig = Field(default_factory=AbConfig)
