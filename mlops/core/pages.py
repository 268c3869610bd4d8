"""The HTML pages people read: the evaluation report, the monitor dashboard and backtest, the error analysis.

One Jinja2 environment over `mlops/core/templates/`, one stylesheet and one way to write a number. Callers
compute what a page shows (rows, chart geometry, colours) and pass it as plain data; the templates hold the
markup. Every page is a single self-contained file: the stylesheet is inlined, nothing is fetched.

Every value is escaped (autoescape), so a model name or a category value from production traffic is shown as
text, never run; a template that names a value the caller did not pass fails instead of printing nothing.
"""

from __future__ import annotations

import math
import numbers
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from mlops.core.atomic import write_text

STYLESHEET = "style.css"


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mlops.core", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["percent"] = percent
    env.tests["real"] = is_real
    env.globals["stylesheet"] = stylesheet()  # base.html.j2 marks it safe: it is ours, not user data
    return env


@cache
def stylesheet() -> str:
    """The one stylesheet every page inlines. Read as a file, not rendered: CSS is not template syntax."""
    loader = jinja2.PackageLoader("mlops.core", "templates")
    source, _, _ = loader.get_source(jinja2.Environment(), STYLESHEET)
    return source.strip()


def render_page(template_name: str, /, **context: Any) -> str:
    """The named template (e.g. `evaluation.html.j2`) rendered with `context`: a whole HTML document."""
    return environment().get_template(template_name).render(**context)


def write_page(path: str | Path, template_name: str, /, **context: Any) -> Path:
    """`render_page` written to `path` atomically: a browser reloading it sees the old page or the new one."""
    return write_text(path, render_page(template_name, **context))


def is_real(value: Any) -> bool:
    """A number to right-align: ints, floats and numpy scalars; not booleans, which read as yes/no."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def fmt(value: Any, missing: str = "n/a") -> str:
    """Display text of a value (escaping is the template's): 4 significant digits, yes/no for booleans,
    `missing` for an absent or undefined number (the evaluation report says n/a, the dashboard -)."""
    if value is None:
        return missing
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):  # float or a numpy scalar
        v = float(value)
        return f"{v:.4g}" if math.isfinite(v) else missing
    return str(value)


def percent(value: float) -> str:
    """A rate as the error analysis shows it: `0.3125` -> `31.2 %`."""
    return f"{100 * value:.1f} %"


# base64 of an image's first bytes -> its type: the log keeps an image's bytes as they were sent, whatever format
_IMAGE_TYPES = (("iVBOR", "image/png"), ("/9j/", "image/jpeg"), ("R0lG", "image/gif"), ("UklGR", "image/webp"),
                ("Qk", "image/bmp"))


def image_data_url(b64: str) -> str | None:
    """An inline image for a page (no file beside it, no network), or None for a format a browser would not
    show: left out rather than drawn broken."""
    kind = next((t for prefix, t in _IMAGE_TYPES if b64.startswith(prefix)), None)
    return None if kind is None else f"data:{kind};base64,{b64}"
