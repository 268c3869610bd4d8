"""The evaluation report as a browser shows it: headless Chromium loads the file and dumps the DOM.

Chromium comes from `make system-deps`. Without it the test is skipped locally but fails in CI, where a
silent skip would hide a broken report.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlops.evaluate.report import write_report
from tests.browser import Tables, chromium, rendered_dom
from tests.unit.test_report import sample_report

pytestmark = pytest.mark.integration


class _Tables(Tables):
    """Cell texts of every table by id, and the src of every image."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        super().handle_starttag(tag, attrs)
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium()
    paths = write_report(sample_report(tmp_path), tmp_path / "report")
    html_path = Path(paths["html"])
    assert not re.search(r"https?://", html_path.read_text()), "the report must not reference the network"

    html = rendered_dom(html_path)
    dom = _Tables()
    dom.feed(html)

    assert "gates" in dom.tables, f"no gates table in the rendered DOM:\n{html[:2000]}"
    header, *rows = dom.tables["gates"]
    assert header == ["gate", "slice", "threshold", "value", "result", "detail"]
    by_metric = {row[0]: row for row in rows}
    assert len(rows) == 2
    passing, failing = by_metric["test/auroc"], by_metric["test/accuracy (vs champion)"]
    assert passing[4] == "PASS" and failing[4] == "FAIL"
    assert failing[1] == "region=<north>"  # escaped in the source, shown as text
    assert "90% CI [-0.0412, 0.0123]" in failing[5] and "p = 0.0321" in failing[5]
    assert "<script>alert(1)</script>" in failing[5]  # rendered as text, not run

    assert {"metrics", "slices", "fairness-gender", "robustness", "performance"} <= set(dom.tables)
    perf = {row[0]: row[1:] for row in dom.tables["performance"]}
    assert perf["measure"] == ["onnx", "torch"] and perf["latency_p99_ms"] == ["4.2", "6"]
    assert len(dom.images) == 2 and all(src.startswith("data:image/png;base64,") for src in dom.images)
