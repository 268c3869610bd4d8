"""The shipped recipes, with what two of them need before they run: the example data their scripts generate
(examples/make_digits.py, examples/make_reviews.py: generated, never committed) and, for the fine-tuning
recipe, the weights file it is told on the command line."""

from __future__ import annotations

import fcntl
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
DIGITS_MANIFEST = ROOT / "examples" / "digits" / "manifest.csv"
REVIEWS = ROOT / "examples" / "reviews.csv"


def example_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_example_data() -> None:
    """Generate the example data the image and mixed recipes read, once: test processes wait on a lock so
    none reads an image another is still writing."""
    (ROOT / "examples").mkdir(exist_ok=True)
    with open(ROOT / "examples" / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not DIGITS_MANIFEST.is_file():
            example_script("make_digits").write_digits(DIGITS_MANIFEST.parent)
        if not REVIEWS.is_file():
            example_script("make_reviews").write_reviews(REVIEWS)


def required_overrides(recipe: Path, tmp: Path) -> list[str]:
    """What a recipe leaves to whoever runs it (`???`): a stand-in weights file for the fine-tuning recipe
    (validation checks that it exists; reading it is the train step's)."""
    if "model:\n  weights: ???" not in recipe.read_text():
        return []
    weights = tmp / "weights.pt"
    weights.write_bytes(b"")
    return [f"model.weights={weights}"]
