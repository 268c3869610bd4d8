"""Jinja2 over the templates shipped in `mlops/deploy/templates/`: values in, text out, nothing else.

Every value that lands in YAML goes through the `json` filter: JSON is YAML, so a model name, a path or a
cron expression is always quoted correctly, whatever characters it holds.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from mlops.core.errors import MlopsError


@cache
def environment() -> Any:
    try:
        import jinja2
    except ImportError:
        raise MlopsError("mlops deploy needs Jinja2: pip install 'mlops[deploy]'") from None
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mlops.deploy", "templates"),
        undefined=jinja2.StrictUndefined,  # a value the caller forgot is an error, never an empty string
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True, autoescape=False,
    )
    env.filters["json"] = lambda v: json.dumps(v)
    return env


def render(template: str, **values: Any) -> str:
    """The named template (e.g. `inferenceservice.yaml.j2`) rendered with `values`."""
    return str(environment().get_template(template).render(**values))
