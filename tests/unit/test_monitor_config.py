"""The recipe's `monitor:` section: shipped defaults validate, mistakes are reported at file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlops.core.errors import RecipeError
from mlops.core.timespec import parse_duration, parse_time
from mlops.recipe import load_recipe
from mlops.recipe.monitor import MonitorConfig
from tests.shipped import required_overrides

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "recipes").glob("*.yaml")
                                           if "\nmonitor:" not in p.read_text()))  # recipes that set it aside
def test_every_shipped_recipe_has_the_default_monitor_section(recipe: str, tmp_path: Path) -> None:
    loaded = load_recipe(ROOT / "recipes" / recipe, required_overrides(ROOT / "recipes" / recipe, tmp_path))
    m = loaded.recipe.monitor
    assert m.drift.num_method == "psi" and m.window.size == 1000 and m.alerts.consecutive == 2
    assert m == MonitorConfig.model_validate(_default_yaml())


def _default_yaml() -> dict:
    from ruamel.yaml import YAML

    return YAML(typ="safe").load((ROOT / "mlops" / "configs" / "monitor" / "default.yaml").read_text())


def _recipe(tmp_path: Path, monitor: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text("name: r\ndata:\n  dataset: breast_cancer\n  target: target\nmonitor:\n" + monitor)
    return path


@pytest.mark.parametrize(("monitor", "line", "message"), [
    ("  window:\n    sise: 10\n", 7, "monitor.window.sise: unknown key (did you mean 'size'?)"),
    ("  drift:\n    num_method: chi2\n", 7, "monitor.drift.num_method: Input should be 'psi', 'ks', 'wasserstein' or "
                                            "'jensenshannon'"),
    ("  window:\n    by: time\n    duration: 1 hour\n", 8, "is not a duration"),
    ("  alerts:\n    webhook: ftp://x\n", 7, "is not an http(s) URL"),
    ("  reference:\n    source: production\n", 6, "a production reference needs 'start' and 'end'"),
    ("  accuracy:\n    metric: acuracy\n", 7, "unknown live metric 'acuracy'"),
    ("  window:\n    size: 100\n", 6, "min_samples (500) is above the window size (100)"),
])
def test_mistakes_are_reported_at_their_line(tmp_path: Path, monitor: str, line: int, message: str) -> None:
    with pytest.raises(RecipeError) as err:
        load_recipe(_recipe(tmp_path, monitor))
    text = str(err.value)
    assert message in text and f"r.yaml:{line}" in text, text


def test_durations_and_times() -> None:
    assert parse_duration("90s") == 90 and parse_duration("1.5h") == 5400 and parse_duration("2w") == 1209600
    assert parse_time("2026-01-01T00:00:00Z") == parse_time("2026-01-01T00:00") == 1767225600.0
    assert parse_time("2h", now=10_000.0) == 2800.0
    assert parse_time("1767225600") == 1767225600.0
    for bad in ("0h", "h", "-1d", "soon"):
        with pytest.raises(ValueError):
            parse_time(bad) if bad == "soon" else parse_duration(bad)
    for bad in ("nan", "1e400", "-5", "inf"):  # --since nan was taken, and left every row out
        with pytest.raises(ValueError, match=f"'{bad}' is not a time: unix seconds are a number from 0 to"):
            parse_time(bad)
