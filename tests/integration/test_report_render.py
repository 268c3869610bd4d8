"""The evaluation report as a browser shows it: headless Chromium loads the file and dumps the DOM.

Chromium comes from `make system-deps`. Without it the test is skipped locally but fails in CI, where a
silent skip would hide a broken report.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from mlops.evaluate.report import write_report
from tests.unit.test_report import sample_report

pytestmark = pytest.mark.integration


class _Tables(HTMLParser):
    """Cell texts of every table by id, and the src of every image."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"anonymous-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "img":
            self.images.append(a.get("src") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        reason = "chromium is not installed (run `make system-deps`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return exe


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    exe = _chromium()
    paths = write_report(sample_report(tmp_path), tmp_path / "report")
    html_path = Path(paths["html"])
    assert not re.search(r"https?://", html_path.read_text()), "the report must not reference the network"

    proc = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         "--dump-dom", html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dom = _Tables()
    dom.feed(proc.stdout)

    assert "gates" in dom.tables, f"no gates table in the rendered DOM:\n{proc.stdout[:2000]}"
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
