"""Images and text, from what users and clients send to the arrays a network takes: the one implementation.

Training (the preprocess step) and every phase that scores a bundle (serve, batch, stream, evaluate,
monitor) call these same functions, so a transform cannot drift between training and serving:

- an image (PNG, JPEG, ... bytes, or a uint8 array) -> decoded with Pillow, converted to the bundle's mode
  (L or RGB), resized to the bundle's size -> uint8 [H, W, C];
- a text -> the tokenizer trained on the training split (the `tokenizers` library, saved in the bundle as
  JSON) -> int64 token ids [L], padded with 0 and truncated to the bundle's length.

What comes after (scaling pixels, embedding tokens) happens inside the network, so the exported graph and
the trained module compute it the same way. Pillow and tokenizers are imported on first use: a tabular
model's server never loads them.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from mlops.core.lazymodel import LazyModel

if TYPE_CHECKING:
    import numpy as np
    from tokenizers import Tokenizer

PAD_ID = 0  # token id 0 is padding: the network masks it
SPECIAL_TOKENS = ("[PAD]", "[UNK]")
UNKNOWN_TOKEN = "[UNK]"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class MediaError(ValueError):
    """An input that cannot become the array the model takes; the message says why, for the person who sent it."""


class ImageSpec(LazyModel):
    """How an image input becomes pixels: every image is converted to `channels` and resized to `size`."""

    size: tuple[int, int] = (32, 32)  # height, width
    channels: Literal[1, 3] = 3
    max_bytes: int = 10_000_000  # an encoded image larger than this is refused before decoding
    max_pixels: int = 40_000_000  # width x height of the encoded image: refused above (decompression bombs)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size[0], self.size[1], self.channels)


class TextSpec(LazyModel):
    """How a text input becomes token ids: the bundle's tokenizer, padded and truncated to `max_length`."""

    tokenizer: str  # the tokenizer's JSON file, relative to the bundle
    max_length: int = 128  # tokens the network sees; longer texts are truncated
    max_chars: int = 100_000  # a longer text is refused before tokenizing
    allow_empty: bool = False  # an empty (or blank) text is refused unless the model was trained with some
    vocab_size: int = Field(0, description="tokens the tokenizer knows (the network's embedding rows)")


class ModelInputs(LazyModel):
    """What a network takes, by input: the preprocessed scalar columns as one float32 vector (`tabular`, their
    count), each image column as uint8 pixels [N, H, W, C], each text column as int64 token ids [N, L].

    A batch is a dict of tensors with these keys: TABULAR (when `tabular` > 0), and each image and text
    column's own name."""

    tabular: int = 0
    images: dict[str, ImageSpec] = Field(default_factory=dict)
    texts: dict[str, TextSpec] = Field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """Every network input, in the order the exported graph takes them."""
        return ([TABULAR] if self.tabular else []) + list(self.images) + list(self.texts)

    @property
    def scalar_only(self) -> bool:
        return not self.images and not self.texts

    @staticmethod
    def array_key(name: str, split: str) -> str:
        """Where input `name` of a split lives in the preprocess step's arrays.npz (the labels are `y_<split>`)."""
        return f"x_{split}" if name == TABULAR else f"{name}__{split}"


TABULAR = "tabular"  # the batch key of the preprocessed scalar columns (no column may take this name)


class PixelStats(LazyModel):
    """Per-channel mean and standard deviation of an image column's training pixels scaled to [0, 1]: the
    network normalises with them inside its graph, so serving needs nothing but the raw pixels."""

    mean: list[float]
    std: list[float]


# --- images ------------------------------------------------------------------------------------------------


def image_bytes(value: Any) -> bytes:
    """The encoded bytes of an image as clients send it: raw bytes, `{"b64": "..."}` (KServe's convention for
    binary data in JSON), or a base64 string."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise MediaError('expected {"b64": "<base64 of the encoded image>"}')
        value = value["b64"]
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise MediaError("not valid base64") from None
    raise MediaError(f"expected an encoded image ({{\"b64\": ...}} or bytes), got {type(value).__name__}")


def decode_image(raw: bytes, spec: ImageSpec) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, C] of the spec's size and channels."""
    return decode_image_sized(raw, spec)[0]


def decode_image_sized(raw: bytes, spec: ImageSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """`decode_image`, and the (width, height) the image had before resizing."""
    from PIL import Image, UnidentifiedImageError

    if len(raw) > spec.max_bytes:
        raise MediaError(f"the image is {len(raw):,} bytes, over the limit of {spec.max_bytes:,}")
    if not raw:
        raise MediaError("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            width, height = img.size  # read from the header: nothing is decoded yet
            if width * height > spec.max_pixels:
                raise MediaError(f"the image is {width}x{height} pixels, over the limit of {spec.max_pixels:,}")
            img.load()
            return _to_array(img, spec), (width, height)
    except MediaError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MediaError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def image_header(raw: bytes) -> tuple[int, int, str]:
    """(width, height, PIL mode) of encoded image bytes, read from the header without decoding the pixels
    (schema statistics and expectations need no more)."""
    from PIL import Image, UnidentifiedImageError

    if not raw:
        raise MediaError("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(raw)) as img:
            return img.size[0], img.size[1], img.mode
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise MediaError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def image_array(value: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """An already decoded image (uint8 [H, W] or [H, W, C]) -> the spec's size; its channels must match."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(value)
    if arr.dtype != np.uint8:
        raise MediaError(f"pixels must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise MediaError(f"an image array is [height, width] or [height, width, channels], got {list(arr.shape)}")
    if arr.shape[2] != spec.channels:
        raise MediaError(f"the model takes {spec.channels} channel{'s' if spec.channels > 1 else ''}, "
                         f"the image has {arr.shape[2]}")
    if arr.shape[0] * arr.shape[1] > spec.max_pixels:
        raise MediaError(f"the image is {arr.shape[1]}x{arr.shape[0]} pixels, over the limit of {spec.max_pixels:,}")
    if tuple(arr.shape[:2]) == spec.size:
        return np.ascontiguousarray(arr)
    img = Image.fromarray(arr[:, :, 0] if spec.channels == 1 else arr, mode="L" if spec.channels == 1 else "RGB")
    return _to_array(img, spec)


def _to_array(img: Any, spec: ImageSpec) -> np.ndarray:
    import numpy as np
    from PIL import Image

    img = img.convert("L" if spec.channels == 1 else "RGB")
    height, width = spec.size
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 [H, W, C] pixels as a PNG (what the log keeps of an image that was sent as pixels)."""
    from PIL import Image

    arr = pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="PNG")
    return out.getvalue()


def decode_images(values: Iterable[bytes], spec: ImageSpec) -> np.ndarray:
    """Many encoded images -> uint8 [N, H, W, C] (the first bad one raises, with its index)."""
    import numpy as np
    out = []
    for i, raw in enumerate(values):
        try:
            out.append(decode_image(raw, spec))
        except MediaError as exc:
            raise MediaError(f"[{i}]: {exc}") from None
    return np.stack(out) if out else np.zeros((0, *spec.shape), np.uint8)


def is_image_path(value: Any) -> bool:
    return isinstance(value, str) and value.lower().endswith(IMAGE_SUFFIXES)


# --- text --------------------------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int, kind: Literal["wordpiece", "bpe", "unigram"] = "bpe",
                    lowercase: bool = True) -> Tokenizer:
    """A tokenizer learnt from `texts` (the training split), nothing downloaded."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        trainer: Any = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS))
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                          unk_token="[UNK]")
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.token_to_id("[PAD]") != PAD_ID:
        raise RuntimeError("the tokenizer must give [PAD] id 0: the network masks that id")
    return tok


def load_tokenizer(text: str) -> Tokenizer:
    """A tokenizer from its JSON (what `Tokenizer.to_str()` wrote into the bundle)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_str(text)


def check_text(value: Any, spec: TextSpec) -> str:
    """A text as the model may take it, or MediaError: a string, within the size limit, not blank unless
    allowed. Bytes must be UTF-8."""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise MediaError("text must be UTF-8") from None
    if not isinstance(value, str):
        raise MediaError(f"expected a text string, got {type(value).__name__}")
    if len(value) > spec.max_chars:
        raise MediaError(f"the text has {len(value):,} characters, over the limit of {spec.max_chars:,}")
    if not value.strip() and not spec.allow_empty:
        raise MediaError("the text is empty")
    return value


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """Token ids int64 [N, max_length], truncated, padded with PAD_ID."""
    import numpy as np
    ids = np.full((len(texts), max_length), PAD_ID, dtype=np.int64)
    for i, enc in enumerate(tokenizer.encode_batch(texts, add_special_tokens=False)):
        row = enc.ids[:max_length]
        ids[i, :len(row)] = row
    return ids
