"""The built-in multi-input network: tabular features, images and texts in one model.

Each input kind has its encoder, and a combiner MLP reads their outputs side by side:

- an image column arrives as uint8 pixels [B, H, W, C] (what `mlops.data.media` decodes, in training and in
  serving alike); scaling to [0, 1] and normalising with the training split's pixel statistics happen here,
  inside the network, so the exported graph does exactly what training did. Then a small CNN, or a
  torchvision classification architecture by name (random initialisation: nothing is ever downloaded);
- a text column arrives as int64 token ids [B, L], 0 being padding: token and position embeddings, a
  Transformer encoder that ignores the padding, and the mean over the real tokens;
- the preprocessed scalar columns (`tabular`, float32 [B, F]) go to the combiner as they are.

The combiner's last hidden layer is the model's embedding (`embed`), exported next to the logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlops.core.errors import MlopsError
from mlops.data.media import PAD_ID, TABULAR, ImageSpec, ModelInputs, TextSpec
from mlops.recipe.schema import ImageEncoderConfig, TextEncoderConfig
from mlops.train.models import SupervisedModule

MIN_PIXEL_STD = 1.0 / 255  # a column of constant images has std 0: one grey level keeps the division finite


def module_key(name: str) -> str:
    """A column name as a submodule name: torch forbids dots there. The parameter names (and so
    `model.freeze` patterns) read `image.<column>.…` / `text.<column>.…` with dots made underscores."""
    return name.replace(".", "_")


def torchvision_names() -> list[str]:
    """Every torchvision classification architecture `get_model` builds."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def conv_net(in_channels: int, widths: list[int], embedding: int) -> nn.Sequential:
    """conv-BN-ReLU-maxpool per width (each halves the resolution), global average pool, linear."""
    layers: list[nn.Module] = []
    width = in_channels
    for w in widths:
        # ceil_mode: an image already down to 1 pixel stays 1 pixel instead of vanishing
        layers += [nn.Conv2d(width, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                   nn.MaxPool2d(2, ceil_mode=True)]
        width = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, embedding)]
    return nn.Sequential(*layers)


def torchvision_net(arch: str, embedding: int) -> nn.Module:
    import torchvision

    names = torchvision_names()
    if arch not in names:
        common = [n for n in ("resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0",
                              "convnext_tiny", "regnet_y_400mf", "shufflenet_v2_x0_5") if n in names]
        raise MlopsError(f"model.image.arch: '{arch}' is neither 'cnn' nor a torchvision classification "
                         f"architecture; valid names include {', '.join(['cnn', *common])} "
                         f"({len(names)} in all: torchvision.models.list_models(module=torchvision.models))")
    # weights=None: random initialisation, never a download; pretrained weights only come from model.weights
    return torchvision.models.get_model(arch, weights=None, num_classes=embedding)


class ImageEncoder(nn.Module):
    """uint8 [B, H, W, C] -> float32 [B, embedding]."""

    def __init__(self, spec: ImageSpec, cfg: ImageEncoderConfig,
                 stats: dict[str, list[float]] | None) -> None:
        super().__init__()
        c = spec.channels
        mean = list(stats["mean"]) if stats else [0.5] * c
        std = [max(float(s), MIN_PIXEL_STD) for s in stats["std"]] if stats else [0.5] * c
        if len(mean) != c or len(std) != c:
            raise MlopsError(f"pixel statistics have {len(mean)} mean(s) and {len(std)} std(s) for an image "
                             f"input of {c} channel(s)")
        # not persistent: the statistics are constructor arguments (the train result's init), so weights
        # loaded to fine-tune never replace this data's normalisation; the export bakes them in as constants
        shape = (1, c, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)
        if cfg.arch == "cnn":
            self.backbone = conv_net(c, list(cfg.channels), cfg.embedding)
            self.to_rgb = False
        else:
            self.backbone = torchvision_net(cfg.arch, cfg.embedding)
            self.to_rgb = c == 1  # torchvision's first layers expect 3 channels: grey is repeated into each

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # contiguous NCHW: a permuted view would give the first convolution channels-last gradients
        x = pixels.permute(0, 3, 1, 2).contiguous().to(torch.float32) / 255.0
        x = (x - self.mean) / self.std
        if self.to_rgb:
            x = x.expand(-1, 3, -1, -1)
        return self.backbone(x)


class TextEncoder(nn.Module):
    """int64 token ids [B, L] (PAD_ID = padding) -> float32 [B, width]: the mean over the real tokens."""

    def __init__(self, spec: TextSpec, cfg: TextEncoderConfig, dropout: float) -> None:
        super().__init__()
        vocab = spec.vocab_size or cfg.vocab_size  # the tokenizer's own size when the data side recorded it
        self.tokens = nn.Embedding(vocab, cfg.width, padding_idx=PAD_ID)
        self.positions = nn.Parameter(torch.zeros(1, spec.max_length, cfg.width))
        nn.init.normal_(self.positions, std=0.02)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, dim_feedforward=2 * cfg.width,
                                           dropout=dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        # no nested tensors: the plain path is the one the ONNX exporter traces, so torch and the graph agree
        self.encoder = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.register_buffer("first", torch.arange(spec.max_length).view(1, -1) == 0, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        padding = ids == PAD_ID
        # a text without a single token would leave attention nothing to attend to (NaN): let it see its
        # first position; its pooled vector is still zero below
        attend = padding & ~(padding.all(dim=1, keepdim=True) & self.first[:, :length])
        h = self.tokens(ids) + self.positions[:, :length]
        h = self.norm(self.encoder(h, src_key_padding_mask=attend))
        keep = (~padding).unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1.0)


class MultiInputNet(SupervisedModule):
    """forward(inputs) -> logits, embed(inputs) -> the combiner's last hidden layer. `inputs` is a dict of
    tensors: TABULAR float32 [B, F] (when the data has scalar columns), each image column uint8
    [B, H, W, C], each text column int64 [B, L]."""

    def __init__(
        self,
        inputs: dict[str, Any],
        output_dim: int,
        task: str,
        hidden: list[int],
        dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: str = "adam",
        image: dict[str, Any] | None = None,
        text: dict[str, Any] | None = None,
        pixel_stats: dict[str, dict[str, list[float]]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        spec = ModelInputs.model_validate(inputs)
        if not spec.names:
            raise MlopsError("the multi-input network needs at least one input (tabular, image or text)")
        keys = [module_key(n) for n in [*spec.images, *spec.texts]]
        if len(set(keys)) != len(keys):
            raise MlopsError(f"image/text column names {[*spec.images, *spec.texts]} collide once dots "
                             "become underscores (submodule names); rename one")
        self.input_spec = spec
        image_cfg = ImageEncoderConfig.model_validate(image or {})
        text_cfg = TextEncoderConfig.model_validate(text or {})
        stats = pixel_stats or {}
        self.image = nn.ModuleDict({module_key(c): ImageEncoder(s, image_cfg, stats.get(c))
                                    for c, s in spec.images.items()})
        self.text = nn.ModuleDict({module_key(c): TextEncoder(s, text_cfg, dropout)
                                   for c, s in spec.texts.items()})
        width = spec.tabular + image_cfg.embedding * len(spec.images) + text_cfg.width * len(spec.texts)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.head = nn.Sequential(*layers)
        self.out = nn.Linear(width, output_dim)
        self.embedding_dim = width
        self.setup_task(task, output_dim)

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Every encoder's output side by side, in the order of `ModelInputs.names`."""
        parts = [inputs[TABULAR].to(torch.float32)] if self.input_spec.tabular else []
        parts += [self.image[module_key(c)](inputs[c]) for c in self.input_spec.images]
        parts += [self.text[module_key(c)](inputs[c]) for c in self.input_spec.texts]
        return torch.cat(parts, dim=1)

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.features(inputs))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.out(self.embed(inputs))

    def forward_with_embedding(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and embedding from one pass (what the export computes)."""
        z = self.embed(inputs)
        return self.out(z), z
