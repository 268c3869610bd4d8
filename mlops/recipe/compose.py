"""Hydra composition of a recipe file plus command-line overrides, and where each key was set.

We use Hydra's compose API rather than `@hydra.main`: it works inside Prefect tasks and tests and does
no directory changes. The recipe's own directory is the primary config dir; `configs/` next to it (or
`MLOPS_CONFIG_PATH`) holds the config groups its defaults list names, and `configs/base.yaml`, the defaults list
shipped recipes extend. Config files set only what differs from the schema, which holds every default.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError, Problem, RecipeError
from mlops.recipe.schema import Recipe
from mlops.recipe.suggest import closest

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
        """The origin of a dotted key; for a key no source set (its value is the schema's default), what set
        keys below it (a section's rule broken by one of its values: the last one merged, so a command-line
        override before a file), else its nearest ancestor that some source set, else the recipe itself."""
        found = self.origins.get(key)
        if found is not None:
            return found
        below = [o for k, o in self.origins.items() if key and k.startswith(f"{key}.")]
        if below:
            return ([o for o in below if o.override is not None] or below)[-1]
        parts = key.split(".")[:-1]
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
    groups = _config_groups(path, search)
    hydra_overrides = [_schema_override(o, groups) for o in overrides] + [
        "hydra.searchpath=[" + ",".join(f"file://{d}" for d in search) + "]",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
    ]
    with _HYDRA_LOCK:
        cfg, origins = _compose_locked(path, overrides, hydra_overrides, search)
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    config = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(config, dict)
    config.pop("hydra", None)
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if value.lstrip().startswith(("[", "{")):  # a whole list or mapping: what files said of its items is gone
            for stale in [k for k in origins if k.startswith(f"{key}.")]:
                del origins[stale]
        origins[key] = Origin(COMMAND_LINE, override=o)
    composed = Composed(path=path, overrides=overrides, config=config, origins=origins)
    if missing:  # `???` in a file: a value the recipe leaves to whoever runs it
        raise RecipeError(composed.display, [
            Problem(k, "is required and not set", str(composed.origin(k)), f"give it on the command line: {k}=...")
            for k in missing])
    return composed


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


def _schema_override(override: str, groups: set[str]) -> str:
    """`a.b=v` for a key the schema knows becomes `++a.b=v` (set it, whether or not some YAML file set it);
    group choices (`model=mlp`, `gates=none`), `+`/`++`/`~` overrides and keys the schema does not know are
    left to Hydra, which refuses an unknown key with the error `_composition_error` words.

    Why it is still needed: Hydra composes in struct mode, where `a.b=v` may only change a key that some
    config file of the composition sets, and `+a.b=v` only add one that none sets. Config files state only
    what differs from the schema (the schema is the one source of defaults), so most valid keys are set by no
    file: `model.lr=0.01` or `seed=7` on a recipe that does not write them is refused by Hydra itself
    ("Key 'lr' is not in struct"), and whether a user must type `+`, `++` or nothing would depend on what the
    files happen to set today. With the rewrite every schema key overrides the same way, typos in known
    positions are still caught (Hydra's struct error for unknown keys, pydantic's extra='forbid' for
    everything composed), and list items (`evaluate.gates.1.alpha`) and mapping values
    (`monitor.drift.features.x.key`) are covered too."""
    key, eq, _ = override.partition("=")
    if not eq or key.startswith(("+", "~")):
        return override
    parent, _, leaf = key.rpartition(".")
    if not parent and leaf in groups:  # a group choice, or a section whose group holds options
        return override
    return f"++{override}" if _schema_accepts(parent, leaf) else override


def _config_groups(primary: Path, search: list[Path]) -> set[str]:
    """The config groups a recipe's overrides may choose from: folders of the recipe's dir and search path."""
    return {d.name for base in [primary.parent, *search] if base.is_dir() for d in base.iterdir() if d.is_dir()}


def _schema_types(path: str) -> list[Any]:
    """The types the schema allows at dotted `path` ('' is the recipe), through unions, list items
    (`evaluate.gates.1`) and mapping values (`monitor.drift.features.mean_area`); [] where it allows nothing."""
    import types
    import typing

    from pydantic import BaseModel


    def unwrap(t: Any) -> list[Any]:
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            return [u for a in typing.get_args(t) for u in unwrap(a)]
        if typing.get_origin(t) is typing.Annotated:
            return unwrap(typing.get_args(t)[0])
        return [t]

    found: list[Any] = [Recipe]
    for part in [p for p in path.split(".") if p]:
        step: list[Any] = []
        for t in found:
            if isinstance(t, type) and issubclass(t, BaseModel):
                fields = [f for name, f in t.model_fields.items() if part in (name, f.alias)]
                step += [u for f in fields for u in unwrap(f.annotation)]
            elif typing.get_origin(t) is list and part.isdigit():
                step += unwrap(typing.get_args(t)[0])
            elif typing.get_origin(t) is dict:
                step += unwrap(typing.get_args(t)[1]) if typing.get_args(t) else [Any]
            elif t is Any:  # free-form values (model.params.x): any key below them
                step.append(Any)
        found = step
    return found


def _schema_keys(path: str) -> list[str]:
    """The keys of the first model the schema allows at dotted `path` (aliases as users write them)."""
    from pydantic import BaseModel

    for t in _schema_types(path):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return [f.alias or name for name, f in t.model_fields.items()]
    return []


def _schema_accepts(parent: str, leaf: str) -> bool:
    """Whether the schema has a place for key `leaf` under dotted `parent`: a model's field, or a mapping's key."""
    import typing

    return leaf in _schema_keys(parent) or any(t is Any or typing.get_origin(t) is dict for t in _schema_types(parent))


def _unknown_part(key: str) -> tuple[str, str]:
    """(parent, segment) of the first segment of dotted `key` the schema has no place for: in
    `monitor.windw.size` the typo is `windw` under `monitor`, not `size` under a section that does not exist."""
    parts = key.split(".")
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if not _schema_types(f"{parent}.{part}" if parent else part):
            return parent, part
    parent, _, leaf = key.rpartition(".")
    return parent, leaf


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
        # the defaults list that names it: the recipe's, or that of a config it extends ("In 'base': ...")
        holder = re.search(r"In '([^']+)'", text)
        file = path if holder is None else _find_config_file(holder.group(1), path, search) or path
        line = None if culprit else _defaults_line(file, group)
        where = f"command-line override '{culprit}'" if culprit else _display(file) + (f":{line}" if line else "")
        msg = f"{where}: {group}: no config '{option}' in group '{group}' (options: {', '.join(options)})"
        return MlopsError(f"recipe {_display(path)} is invalid:\n  {msg}" + (f" (did you mean '{hint}'?)" if hint else ""))
    unloadable = re.search(r"In '([^']+)': Could not load '([^']+)'", text)
    if unloadable and not culprit:  # a config named in a defaults list without a group: `- bse` for `- base`
        owner, name = unloadable.groups()
        file = _find_config_file(owner, path, search) or path
        line = _defaults_line(file, name)
        hint = closest(name, sorted({f.stem for d in [path.parent, *search] for f in d.glob("*.yaml")}))
        msg = f"{_display(file)}{f':{line}' if line else ''}: defaults: no config '{name}'"
        msg += f" (did you mean '{hint}'?)" if hint else ""
        return MlopsError(f"recipe {_display(path)} is invalid:\n  {msg}")
    if culprit is not None:
        key = culprit.lstrip("+~").partition("=")[0]
        parent, leaf = _unknown_part(key)
        if "No match in the defaults list" in str(exc):  # `trainer=ddp_cpu` on a recipe that picks no trainer
            options = sorted({f.stem for d in [path.parent, *search] for f in (d / key).glob("*.yaml")})
            msg = (f"command-line override '{culprit}': {key}: the recipe's defaults list picks no '{key}' config to"
                   f" replace; add one with '+{culprit.lstrip('+~')}'")
            msg += f" (options: {', '.join(options)})" if options else ""
        elif "not in struct" in cause or "Could not override" in text:
            valid = _schema_keys(parent)
            hint = closest(leaf, valid)
            key = f"{parent}.{leaf}" if parent else leaf
            msg = f"command-line override '{culprit}': {key}: unknown key"
            msg += f" (did you mean '{parent + '.' if parent else ''}{hint}'?)" if hint else f" (valid keys: {', '.join(valid)})"
        else:
            msg = f"command-line override '{culprit}': {text}"
        return MlopsError(f"recipe {_display(path)} is invalid:\n  {msg}")
    return MlopsError(f"recipe {_display(path)} is invalid:\n  {text} {cause}".rstrip())


def _defaults_line(path: Path, group: str) -> int | None:
    """The 1-based line of `group`'s entry in the defaults list of config file `path`, if it has one."""
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
        if group in keys or str(item).split("@")[0].strip() == group:
            return defaults.lc.item(i)[0] + 1
    return None
