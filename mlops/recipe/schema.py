"""The recipe's typed schema: the one source of truth for configuration.

Every model forbids unknown keys, so a typo is an error that names the key, never a silent default.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

BUILTIN_DATASETS = ("breast_cancer", "wine", "digits", "diabetes")
BUILTIN_MODEL = "mlops.train.models.TabularMLP"
BUILTIN_DATAMODULE = "mlops.train.datamodule.ArrayDataModule"
Task = Literal["auto", "binary", "multiclass", "regression"]


def dotted_path(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", v):
        raise ValueError(f"'{v}' is not a dotted path like 'package.module.ClassName'")
    return v


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SplitConfig(Section):
    """Deterministic train/val/test split; stratified for classification when asked."""

    train: Annotated[float, Field(gt=0, lt=1)] = 0.7
    val: Annotated[float, Field(gt=0, lt=1)] = 0.15
    test: Annotated[float, Field(gt=0, lt=1)] = 0.15
    stratify: bool = True
    seed: int | None = Field(None, description="defaults to the recipe's seed")

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class DataModuleConfig(Section):
    """The LightningDataModule that feeds training. It is built with `arrays` (the preprocessed
    {split: (x, y)}), `batch_size`, `seed` and `params`; preprocessing stays in the exported graph."""

    target: str = Field(BUILTIN_DATAMODULE, alias="_target_", description="dotted path of a LightningDataModule")
    params: dict[str, Any] = Field(default_factory=dict)

    _dotted = field_validator("target")(lambda cls, v: dotted_path(v))


class DataConfig(Section):
    """Where the rows come from: a built-in dataset by name, or a CSV/Parquet file."""

    dataset: Literal["breast_cancer", "wine", "digits", "diabetes"] | None = Field(
        None, description="a dataset that ships inside scikit-learn"
    )
    path: str | None = Field(None, description="CSV or Parquet file; relative paths start at the recipe's directory")
    format: Literal["csv", "parquet"] | None = Field(None, description="inferred from the file suffix when absent")
    target: str = Field(description="the column to predict")
    task: Task = "auto"
    features: list[str] | None = Field(None, description="columns to use; all but the target when absent")
    drop: list[str] = Field(default_factory=list, description="columns to leave out")
    categorical: list[str] | None = Field(None, description="force these columns categorical; strings are anyway")
    split: SplitConfig = Field(default_factory=SplitConfig)
    datamodule: DataModuleConfig = Field(default_factory=DataModuleConfig)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of 'dataset' (a built-in data set) or 'path' (a CSV/Parquet file)")
        return self


class ModelConfig(Section):
    """The LightningModule. The built-in MLP takes the fields below; a custom `_target_` gets `params`."""

    target: str = Field(BUILTIN_MODEL, alias="_target_", description="dotted path of a LightningModule class")
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 32])
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    batch_size: PositiveInt = 64
    params: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for a custom _target_")

    _dotted = field_validator("target")(lambda cls, v: dotted_path(v))


class EarlyStoppingConfig(Section):
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: PositiveInt = 5
    min_delta: Annotated[float, Field(ge=0)] = 0.0


class CheckpointConfig(Section):
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"


class TrainerConfig(Section):
    """Lightning Trainer settings. `devices: 2, strategy: ddp` is multi-process on CPU or GPU alike."""

    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "cpu"
    devices: int | Literal["auto"] | list[int] = 1
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "single_device"] = "auto"
    num_nodes: PositiveInt = 1
    precision: Literal["32-true", "32", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"] = "32-true"
    max_epochs: PositiveInt = 20
    min_epochs: Annotated[int, Field(ge=0)] = 0
    deterministic: bool = True
    gradient_clip_val: Annotated[float, Field(ge=0)] | None = None
    early_stopping: EarlyStoppingConfig | None = Field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)

    @field_validator("devices")
    @classmethod
    def _devices(cls, v: int | str | list[int]) -> int | str | list[int]:
        if isinstance(v, int) and v == 0 or isinstance(v, int) and v < -1:
            raise ValueError("devices must be a positive count, -1 (all), 'auto' or a list of device indices")
        return v

    @property
    def multiprocess(self) -> bool:
        """True when Lightning would start more than one process: those train in a worker subprocess."""
        many = self.devices == -1 or (isinstance(self.devices, int) and self.devices > 1)
        many = many or (isinstance(self.devices, list) and len(self.devices) > 1) or self.num_nodes > 1
        return many or self.strategy.startswith("ddp") or self.strategy == "fsdp"


class TrackingConfig(Section):
    uri: str | None = Field(None, description="MLflow tracking URI; MLFLOW_TRACKING_URI, then sqlite under .mlops/")
    experiment: str | None = Field(None, description="defaults to the recipe's name")


class RegistryConfig(Section):
    enabled: bool = True
    model_name: str | None = Field(None, description="defaults to the recipe's name")


class ExportConfig(Section):
    opset: Annotated[int, Field(ge=17, le=23)] = 18
    parity_atol: PositiveFloat = 1e-5
    parity_batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 7, 64])


class FloatParam(Section):
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: PositiveFloat | None = None

    @model_validator(mode="after")
    def _range(self) -> FloatParam:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class IntParam(Section):
    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: PositiveInt = 1

    @model_validator(mode="after")
    def _range(self) -> IntParam:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class CategoricalParam(Section):
    type: Literal["categorical"]
    choices: Annotated[list[Any], Field(min_length=1)]


SearchSpace = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class SweepConfig(Section):
    """An Optuna study over recipe keys. Trials run as Prefect tasks; the study is durable and resumable."""

    metric: str = Field("val/loss", description="a metric the model logs each epoch, read at the best checkpoint")
    direction: Literal["minimize", "maximize"] = "minimize"
    n_trials: PositiveInt = 20
    parallelism: PositiveInt = Field(1, description="trials at once on this machine")
    sampler: Literal["tpe", "random", "grid", "cmaes"] = "tpe"
    seed: int | None = Field(None, description="sampler seed; defaults to the recipe's seed")
    pruner: Literal["none", "median", "hyperband"] = "median"
    pruner_startup_trials: Annotated[int, Field(ge=0)] = 2
    pruner_warmup_epochs: Annotated[int, Field(ge=0)] = 1
    storage: str | None = Field(None, description="Optuna RDB URL shared by workers; sqlite under .mlops/ if null")
    study_name: str | None = Field(None, description="defaults to '<recipe name>-<hash of the search space>'")
    retries: Annotated[int, Field(ge=0)] = 1
    params: dict[str, SearchSpace] = Field(default_factory=dict, description="dotted recipe key -> search space")

    @model_validator(mode="after")
    def _grid(self) -> SweepConfig:
        if self.sampler == "grid":
            for key, p in self.params.items():
                if isinstance(p, FloatParam) and p.step is None:
                    raise ValueError(f"grid sampler needs a step for float parameter '{key}'")
        return self


class Recipe(Section):
    """A whole lifecycle: each phase reads its own section and nothing is configured twice."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$", max_length=64)]
    description: str = ""
    seed: int = 42
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    sweep: SweepConfig | None = None

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.name

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def split_seed(self) -> int:
        return self.data.split.seed if self.data.split.seed is not None else self.seed


def json_schema() -> dict[str, Any]:
    """The recipe's JSON Schema, for editors (yaml-language-server) and `mlops schema`."""
    schema = Recipe.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mlops recipe"
    return schema
