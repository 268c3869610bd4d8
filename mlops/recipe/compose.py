"""Hydra composition of a recipe file plus command-line overrides, and where each key was set.

We use Hydra's compose API rather than `@hydra.main`: it works inside Prefect tasks and tests and does
no directory changes. The recipe's own directory is the primary config dir; `configs/` next to it (or
`MLOPS_CONFIG_PATH`) holds the config groups its defaults list names.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError

# Hydra keeps its config loader in a process-wide singleton: two threads composing at once (two retrains
# triggered together, a server reloading while a flow composes) would clear each other's.
_HYDRA_LOCK = threading.Lock()

COMMAND_LINE = "command line"


@dataclass(frozen=True)
class Origin:
    """Where a key's value came from: a YAML file and 1-based line, or a command-line override."""

    file: str
    line: int | None = None
    override: str | None = None

    def __str__(self) -> str:
        if self.override is not None:
            return f"command-line override '{self.override}'"
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Composed:
    """A composed recipe: the plain dict plus the origin of every key that any source set."""

    path: Path
    overrides: list[str]
    config: dict[str, Any]
    origins: dict[str, Origin] = field(default_factory=dict)

    @property
    def display(self) -> str:
        """The recipe file as the user named it (relative to the working directory when inside it)."""
        return _display(self.path)

    def origin(self, key: str) -> Origin:
        """The origin of a dotted key, or of its nearest ancestor that some source set."""
        parts = key.split(".")
        while parts:
            found = self.origins.get(".".join(parts))
            if found is not None:
                return found
            parts.pop()
        return Origin(_display(self.path), 1)


def config_search_path(recipe: Path) -> list[Path]:
    """Directories holding config groups, most specific first."""
    dirs = [Path(p) for p in os.environ.get("MLOPS_CONFIG_PATH", "").split(os.pathsep) if p]
    for candidate in (recipe.parent / "configs", recipe.parent.parent / "configs"):
        if candidate.is_dir():
            dirs.append(candidate)
    return [d.resolve() for d in dirs]


def compose(recipe: str | Path, overrides: list[str] | None = None) -> Composed:
    """Compose `recipe` with Hydra and record the origin of every key."""
    from omegaconf import OmegaConf

    path = Path(recipe)
    if not path.is_file():
        raise MlopsError(f"recipe file not found: {path}")
    path = path.resolve()
    overrides = list(overrides or [])
    search = config_search_path(path)
    hydra_overrides = [_schema_override(o) for o in overrides] + [
        "hydra.searchpath=[" + ",".join(f"file://{d}" for d in search) + "]",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
    ]
    with _HYDRA_LOCK:
        cfg, origins = _compose_locked(path, overrides, hydra_overrides, search)
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    config.pop("hydra", None)
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if value.lstrip().startswith(("[", "{")):  # a whole list or mapping: what files said of its items is gone
            for stale in [k for k in origins if k.startswith(f"{key}.")]:
                del origins[stale]
        origins[key] = Origin(COMMAND_LINE, override=o)
    return Composed(path=path, overrides=overrides, config=config, origins=origins)


def _compose_locked(
    path: Path, overrides: list[str], hydra_overrides: list[str], search: list[Path]
) -> tuple[Any, dict[str, Origin]]:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.parent), version_base="1.3", job_name=path.stem):
            try:
                cfg = hydra_compose(config_name=path.stem, overrides=hydra_overrides)
            except HydraException as exc:
                raise _composition_error(path, overrides, exc, search) from None
            except Exception as exc:  # OmegaConf/YAML errors while loading a config file
                raise MlopsError(f"{_display(path)}: cannot compose recipe: {exc}") from None
            origins = _origins(path, hydra_overrides, search)
    finally:
        GlobalHydra.instance().clear()
    return cfg, origins


def _schema_override(override: str) -> str:
    """`a.b=v` for a key the schema knows but no YAML sets becomes `++a.b=v`: Hydra's struct mode would
    refuse it, yet it is a valid recipe key. Group choices (`model=mlp`) and unknown keys are left alone."""
    from mlops.recipe.suggest import keys_at

    key, eq, _ = override.partition("=")
    if not eq or key.startswith(("+", "~")) or "." not in key:
        return override
    parent, _, leaf = key.rpartition(".")
    return f"++{override}" if leaf in keys_at(parent) else override


def _origins(primary: Path, overrides: list[str], search: list[Path]) -> dict[str, Origin]:
    """Walk the defaults list in merge order; later files win, as they do in Hydra's merge."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    loader = GlobalHydra.instance().config_loader()
    defaults = loader.compute_defaults_list(config_name=primary.stem, overrides=overrides, run_mode=RunMode.RUN)
    origins: dict[str, Origin] = {}
    for d in defaults.defaults:
        package = d.package or ""
        if d.config_path is None or package == "hydra" or package.startswith("hydra."):
            continue
        file = _find_config_file(d.config_path, primary, search)
        if file is None:
            continue
        for key, line in yaml_key_lines(file).items():
            if key == "defaults" or key.startswith("defaults."):
                continue
            full = f"{package}.{key}" if package else key
            origins[full] = Origin(_display(file), line)
    return origins


def _find_config_file(config_path: str, primary: Path, search: list[Path]) -> Path | None:
    for base in [primary.parent, *search]:
        candidate = base / f"{config_path}.yaml"
        if candidate.is_file():
            return candidate
    return None


def yaml_key_lines(file: Path) -> dict[str, int]:
    """Every dotted key of a YAML mapping with its 1-based line (ruamel keeps positions, OmegaConf does not)."""
    from ruamel.yaml import YAML

    data = YAML(typ="rt").load(file.read_text())
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if not hasattr(node, "lc"):
            return
        if isinstance(node, list):  # list items by index, as pydantic reports them: evaluate.gates.1.metric
            for i, item in enumerate(node):
                lines[f"{prefix}{i}"] = node.lc.item(i)[0] + 1
                walk(item, f"{prefix}{i}.")
            return
        if not isinstance(node, dict):
            return
        for k in node:
            key = f"{prefix}{k}"
            lines[key] = node.lc.key(k)[0] + 1
            walk(node[k], key + ".")

    walk(data, "")
    return lines


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _composition_error(path: Path, overrides: list[str], exc: Exception, search: list[Path]) -> MlopsError:
    """Hydra's own errors (unknown group option, override of a missing key) in our format."""
    import re

    from mlops.recipe.suggest import closest, keys_at, unknown_part

    text = str(exc).splitlines()[0]
    cause = str(exc.__cause__ or "")
    missing = re.search(r"Could not find '([^']+)/([^']+)'", text)
    culprit = next((o for o in overrides if f"'{o.lstrip('+~').partition('=')[0]}'" in text or f"'{o}'" in text), None)
    bad = getattr(exc, "override", None)  # a parse error names the override it could not parse
    culprit = culprit or next((o for o in overrides if bad in (o, f"++{o}")), None)
    if missing:
        group, option = missing.groups()
        options = sorted({f.stem for d in [path.parent, *search] for f in (d / group).glob("*.yaml")})
        hint = closest(option, options)
        culprit = next((o for o in overrides if o.lstrip("+~").startswith(f"{group}=")), None)
        line = None if culprit else _defaults_line(path, group)
        where = f"command-line override '{culprit}'" if culprit else _display(path) + (f":{line}" if line else "")
        msg = f"{where}: {group}: no config '{option}' in group '{group}' (options: {', '.join(options)})"
        return MlopsError(f"recipe {_display(path)} is invalid:\n  {msg}" + (f" (did you mean '{hint}'?)" if hint else ""))
    if culprit is not None:
        key = culprit.lstrip("+~").partition("=")[0]
        parent, leaf = unknown_part(key)
        if "not in struct" in cause or "Could not override" in text:
            hint = closest(leaf, keys_at(parent))
            key = f"{parent}.{leaf}" if parent else leaf
            msg = f"command-line override '{culprit}': {key}: unknown key"
            msg += f" (did you mean '{parent + '.' if parent else ''}{hint}'?)" if hint else f" (valid keys: {', '.join(keys_at(parent))})"
        else:
            msg = f"command-line override '{culprit}': {text}"
        return MlopsError(f"recipe {_display(path)} is invalid:\n  {msg}")
    return MlopsError(f"recipe {_display(path)} is invalid:\n  {text} {cause}".rstrip())


def _defaults_line(path: Path, group: str) -> int | None:
    """The 1-based line of `group`'s entry in the recipe's own defaults list, if it has one."""
    from ruamel.yaml import YAML

    try:
        data = YAML(typ="rt").load(path.read_text())
    except Exception:
        return None
    defaults = data.get("defaults") if isinstance(data, dict) else None
    if not isinstance(defaults, list):
        return None
    for i, item in enumerate(defaults):
        keys = [str(k).removeprefix("override ").split("@")[0].strip() for k in item] if isinstance(item, dict) else []
        if group in keys:
            return defaults.lc.item(i)[0] + 1
    return None
