"""Hydra composition of a recipe file plus command-line overrides, and where each key was set.

We use Hydra's compose API rather than `@hydra.main`: it works inside Prefect tasks and tests and does
no directory changes. The recipe's own directory is the primary config dir; then come the directories of
`MLOPS_CONFIG_PATH`, the project's own `configs/` (beside the recipe, beside its folder, or at the project root),
and last the config groups shipped inside the package (`mlops/configs/`, with `base.yaml`, the defaults list
shipped recipes extend): a project's `configs/` holds only what it adds or overrides. Config files set only
what differs from the schema, which holds every default.

Recipes may come from untrusted pull requests: before Hydra reads a file, `_check_files` refuses one too
large, nested too deep, or whose YAML aliases expand past a bound, and words the mistakes Hydra words badly
(a recipe that is a list, a defaults list that includes itself, `default:` for `defaults:`) at file:line.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.core.errors import MlopsError, Problem, RecipeError
from mlops.core.workspace import project_root
from mlops.recipe.suggest import closest, keys_at, schema_accepts, schema_types, unknown_part

if TYPE_CHECKING:
    from omegaconf.errors import InterpolationResolutionError

# A recipe whose defaults list leaves out `_self_` has its own values merged last, as Hydra 1.1+ does and as a
# recipe means; Hydra's warning about it (from its site-packages, with a link about migrating from Hydra 1.0)
# is not the user's to act on. A misspelt `_self_` is refused by `_check_files` before Hydra reads the file.
warnings.filterwarnings("ignore", message=r"In '[^']*': Defaults list is missing `_self_`", category=UserWarning,
                        module=r"hydra\.")

# Hydra keeps its config loader in a process-wide singleton: two threads composing at once (two retrains
# triggered together, a server reloading while a flow composes) would clear each other's.
_HYDRA_LOCK = threading.RLock()

COMMAND_LINE = "command line"
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # package data: found wherever mlops is installed
MAX_FILE_BYTES = 1 << 20  # a recipe or config file; shipped ones are a few KiB
MAX_VALUES = 20_000  # values of one file with its aliases expanded; shipped ones have a few hundred
MAX_DEPTH = 64  # lists and mappings inside each other


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
    # where each key was set, worked out on first use: walking the defaults list again and reading every file
    # with ruamel costs about as much as composing, and only a recipe with a problem needs it
    find_origins: Callable[[], dict[str, Origin]] = field(default=dict, repr=False)

    @cached_property
    def origins(self) -> dict[str, Origin]:
        return self.find_origins()

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
    """Directories holding config groups, most specific first: `MLOPS_CONFIG_PATH`, the project's `configs/`
    (beside the recipe, beside its folder, at the project root), then the groups shipped with the package."""
    dirs = [Path(p) for p in os.environ.get("MLOPS_CONFIG_PATH", "").split(os.pathsep) if p]
    root = project_root(recipe.parent)
    for candidate in (recipe.parent / "configs", recipe.parent.parent / "configs", *([root / "configs"] if root else [])):
        if candidate.is_dir():
            dirs.append(candidate)
    dirs.append(SHIPPED_CONFIGS)
    return list(dict.fromkeys(d.resolve() for d in dirs))


def compose(recipe: str | Path, overrides: list[str] | None = None) -> Composed:
    """Compose `recipe` with Hydra and record the origin of every key."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    path, overrides, search, hydra_overrides = _prepare(recipe, overrides)
    with _HYDRA_LOCK:
        cfg = _compose_locked(path, overrides, hydra_overrides, search)
    unresolved: InterpolationResolutionError | None = None
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
        missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    except InterpolationResolutionError as exc:  # worded once the origins can say where it was written
        config, unresolved = OmegaConf.to_container(cfg, resolve=False), exc
        missing = sorted(k for k, v in _written_strings(config).items() if v == "???" and not k.startswith("hydra."))
    assert isinstance(config, dict)
    config.pop("hydra", None)

    def find_origins() -> dict[str, Origin]:
        with _HYDRA_LOCK:
            origins = _file_origins(path, hydra_overrides, search)
        for o in overrides:
            key, _, value = o.lstrip("+~").partition("=")
            if value.lstrip().startswith(("[", "{")):  # a whole list or mapping: what files said of its items is gone
                for stale in [k for k in origins if k.startswith(f"{key}.")]:
                    del origins[stale]
            origins[key] = Origin(COMMAND_LINE, override=o)
        return origins

    composed = Composed(path=path, overrides=overrides, config=config, find_origins=find_origins)
    if missing:  # `???` in a file: a value the recipe leaves to whoever runs it
        raise RecipeError(composed.display, [
            Problem(k, "is required and not set", str(composed.origin(k)), f"give it on the command line: {k}=...")
            for k in missing])
    if unresolved is not None:
        raise RecipeError(composed.display, [_interpolation_problem(composed, unresolved)])
    return composed


# OmegaConf's resolvers that a recipe may use, for the did-you-mean of an unknown one (OmegaConf lists its
# registered resolvers only through a private attribute)
KNOWN_RESOLVERS = ("oc.env", "oc.decode", "oc.create", "oc.select", "oc.dict.keys", "oc.dict.values", "oc.deprecated")


def _interpolation_problem(composed: Composed, exc: InterpolationResolutionError) -> Problem:
    """A `${...}` that OmegaConf could not resolve, at the key whose value writes it. OmegaConf names the key
    it was resolving, which for `a: x${b}` with `b: ${oops}` is `a`: the key whose written value holds the
    culprit (`${oops}`, the unset variable, the unknown resolver) is preferred when there is one."""
    import re

    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationKeyError, UnsupportedInterpolationType

    text = str(exc.msg).splitlines()[0]
    written = _written_strings(composed.config)
    key = re.sub(r"\[(\d+)\]", r".\1", str(exc.full_key or ""))  # `gates[1].metric` as pydantic has it: gates.1.metric
    env = re.search(r"Environment variable '([^']+)' not found", text)
    if isinstance(exc, InterpolationKeyError) and (name := re.search(r"Interpolation key '([^']+)'", text)):
        ref = name.group(1)
        culprit = rf"\$\{{\s*{re.escape(ref)}\s*\}}"
        message = f"unknown interpolation key '{ref}'"
        near = closest(ref, [k for k in _all_keys(composed.config) if k != key])
        in_schema = ref if schema_types(ref) else _schema_key_near(ref)
        if near:
            hint = f"did you mean '${{{near}}}'?"
        elif in_schema:  # a key no file sets: its value is the schema's, which OmegaConf cannot see
            hint = "" if in_schema == ref else f"did you mean '${{{in_schema}}}'? "
            hint += (f"'{in_schema}' takes the schema's default, which is filled in after interpolations are"
                     " resolved: set it in the recipe to refer to it")
        else:
            hint = "refer to a key the recipe's files set, by its dotted name"
    elif env:
        var = env.group(1)
        culprit = rf"oc\.env\s*:\s*{re.escape(var)}\b"
        message = f"environment variable {var} is not set"
        hint = f"set it, or give a default: ${{oc.env:{var},default}}"
    elif isinstance(exc, UnsupportedInterpolationType):
        resolver = text.removeprefix("Unsupported interpolation type").strip()
        culprit = rf"\$\{{\s*{re.escape(resolver)}\s*:"
        message = f"unknown resolver '{resolver}'"
        near = closest(resolver, [r for r in KNOWN_RESOLVERS if OmegaConf.has_resolver(r)])
        hint = f"did you mean '{near}'?" if near else f"resolvers: {', '.join(KNOWN_RESOLVERS)}"
    elif "Recursive interpolation" in text:
        culprit = ""
        message = "refers back to itself, directly or through other keys (a loop)"
        hint = "write a value, or refer to a key that does not refer back"
    else:
        culprit = ""
        message = f"cannot resolve the interpolation: {text}"
        hint = ""
    if culprit and not re.search(culprit, written.get(key, "")):
        key = next((k for k, v in written.items() if re.search(culprit, v)), key)
    if key in written:
        message = f"'{written[key]}': {message}"
    return Problem(key, message, str(composed.origin(key)), hint)


def _schema_key_near(ref: str) -> str | None:
    """The schema key that dotted `ref` misspells in its last part: `trainer.max_epochs` for `trainer.max_epoch`."""
    parent, _, leaf = ref.rpartition(".")
    near = closest(leaf, keys_at(parent))
    return None if near is None else f"{parent}.{near}" if parent else near


def _written_strings(config: Any, prefix: str = "") -> dict[str, str]:
    """Every string value of an unresolved config by dotted key: where each `${...}` is written."""
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else []
    found: dict[str, str] = {}
    for k, v in items:
        if isinstance(v, str):
            found[f"{prefix}{k}"] = v
        else:
            found.update(_written_strings(v, f"{prefix}{k}."))
    return found


def _all_keys(config: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a config, sections included: what an interpolation may refer to."""
    if not isinstance(config, dict):
        return []
    return [k for key, v in config.items() for k in [f"{prefix}{key}", *_all_keys(v, f"{prefix}{key}.")]]


def _prepare(recipe: str | Path, overrides: list[str] | None) -> tuple[Path, list[str], list[Path], list[str]]:
    """The recipe's absolute path, its overrides, its search path and the overrides Hydra is given, once every
    file the composition reaches is known to be safe to read."""
    path = Path(recipe)
    if not path.is_file():
        raise MlopsError(f"recipe file not found: {path}")
    path = path.resolve()
    overrides = list(overrides or [])
    search = config_search_path(path)
    groups = _config_groups(path, search)
    _check_files(path, search, overrides, groups)
    hydra_overrides = [_schema_override(o, groups) for o in overrides] + [
        "hydra.searchpath=[" + ",".join(f"file://{d}" for d in search) + "]",
        "hydra/job_logging=none",
        "hydra/hydra_logging=none",
    ]
    return path, overrides, search, hydra_overrides


@dataclass(frozen=True)
class SearchDir:
    """One directory of a recipe's config search path, and why it is there."""

    path: Path
    source: str  # recipe (its own folder), MLOPS_CONFIG_PATH, project (a configs/ folder), mlops (shipped)


@dataclass(frozen=True)
class DefaultEntry:
    """One config of a recipe's defaults list, in merge order (later ones win)."""

    config: str  # its config path: `data/breast_cancer`, `base`, the recipe's own name
    package: str  # where its keys land: `evaluate` for `gates/...`, "" for the top level
    parent: str  # the config whose defaults list names it ("<root>" for the recipe itself)
    file: str | None  # the YAML file it was read from


@dataclass
class HydraView:
    """A composition as Hydra's `--cfg` and `--info` show it, before the schema fills in its defaults."""

    config: dict[str, Any]  # what the files and overrides set, interpolations as written (`${...}`)
    hydra: dict[str, Any]  # the parts of Hydra's own `hydra:` node that mlops uses (see `hydra_view`)
    defaults: list[DefaultEntry]
    search: list[SearchDir]


def labelled_search_path(recipe: Path) -> list[SearchDir]:
    """The recipe's folder (Hydra's primary config dir), then `config_search_path`, each with its source."""
    recipe = recipe.resolve()
    from_env = {Path(p).resolve() for p in os.environ.get("MLOPS_CONFIG_PATH", "").split(os.pathsep) if p}
    dirs = [SearchDir(recipe.parent, "recipe")]
    for d in config_search_path(recipe):
        source = "mlops" if d == SHIPPED_CONFIGS else "MLOPS_CONFIG_PATH" if d in from_env else "project"
        dirs.append(SearchDir(d, source))
    return dirs


def hydra_view(recipe: str | Path, overrides: list[str] | None = None) -> HydraView:
    """Compose `recipe` as `compose` does, and keep what `mlops run --cfg/--info` print: the composition with
    its interpolations unresolved, the defaults list, the search path and Hydra's own node. Of that node only
    what applies to the compose API is kept (`runtime`: version, cwd, config sources, group choices;
    `overrides`; `job`: name, config name, override dirname; `searchpath`): mlops uses neither Hydra's
    launcher, sweeper, output directories nor logging, so printing their settings would only mislead."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    path, overrides, search, hydra_overrides = _prepare(recipe, overrides)
    with _HYDRA_LOCK:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(path.parent), version_base="1.3", job_name=path.stem):
                try:
                    cfg = hydra_compose(config_name=path.stem, overrides=hydra_overrides, return_hydra_config=True)
                except HydraException as exc:
                    raise _composition_error(path, overrides, exc, search) from None
                except Exception as exc:
                    raise MlopsError(f"{_display(path)}: cannot compose recipe: {exc}") from None
                loader = GlobalHydra.instance().config_loader()
                found = loader.compute_defaults_list(config_name=path.stem, overrides=hydra_overrides,
                                                     run_mode=RunMode.RUN).defaults
        finally:
            GlobalHydra.instance().clear()
    config = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(config, dict)
    node = config.pop("hydra")
    runtime, job = node["runtime"], node["job"]
    hydra = {
        "runtime": {k: runtime[k] for k in ("version", "version_base", "cwd", "config_sources", "choices")},
        "overrides": node["overrides"],
        "job": {k: job[k] for k in ("name", "config_name", "override_dirname")},
        "searchpath": node["searchpath"],
    }
    defaults = []
    for d in found:
        package = d.package or ""
        if d.config_path is None or package == "hydra" or package.startswith("hydra."):
            continue  # Hydra's own configs: what they set is in the `hydra:` node
        file = _find_config_file(d.config_path, path, search)
        defaults.append(DefaultEntry(d.config_path, package, d.parent or "", _display(file) if file else None))
    return HydraView(config, hydra, defaults, labelled_search_path(path))


def _compose_locked(path: Path, overrides: list[str], hydra_overrides: list[str], search: list[Path]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.parent), version_base="1.3", job_name=path.stem):
            try:
                return hydra_compose(config_name=path.stem, overrides=hydra_overrides)
            except HydraException as exc:
                raise _composition_error(path, overrides, exc, search) from None
            except Exception as exc:  # OmegaConf/YAML errors while loading a config file
                raise MlopsError(f"{_display(path)}: cannot compose recipe: {exc}") from None
    finally:
        GlobalHydra.instance().clear()


def _file_origins(path: Path, hydra_overrides: list[str], search: list[Path]) -> dict[str, Origin]:
    """The origins of a recipe that composed, read in a Hydra context of its own (under the caller's lock)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.parent), version_base="1.3", job_name=path.stem):
            return _origins(path, hydra_overrides, search)
    finally:
        GlobalHydra.instance().clear()


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
    return f"++{override}" if schema_accepts(parent, leaf) else override


def nearest_key(recipe: Path, parent: str, leaf: str) -> str | None:
    """What an override's unknown key `leaf` under dotted `parent` likely meant: a key the schema has there, else,
    at the top level, one of the recipe's config groups (`gate=x` or `+gate=x` for the choice `gates=x`)."""
    return closest(leaf, keys_at(parent)) or (
        None if parent else closest(leaf, sorted(_config_groups(recipe, config_search_path(recipe)))))


def _config_groups(primary: Path, search: list[Path]) -> set[str]:
    """The config groups a recipe's overrides may choose from: folders of the recipe's dir and search path."""
    return {d.name for base in [primary.parent, *search] if base.is_dir() for d in base.iterdir() if d.is_dir()}


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
        looked = ", ".join(_display(d / group) + "/" for d in [path.parent, *search])
        groups = sorted(_config_groups(path, search))
        if not any((d / group).is_dir() for d in [path.parent, *search]) and (near := closest(group, groups)):
            msg = f"{where}: {group}: no config group '{group}' (did you mean '{near}'? groups: {', '.join(groups)})"
            return MlopsError(f"recipe {_display(path)} is invalid:\n  {msg}")
        msg = f"{where}: {group}: no config '{option}' in group '{group}' (options: {', '.join(options) or 'none'};"
        msg += f" looked in {looked})"
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
        parent, leaf = unknown_part(key)
        if "No match in the defaults list" in str(exc):  # `trainer=ddp_cpu` on a recipe that picks no trainer
            options = sorted({f.stem for d in [path.parent, *search] for f in (d / key).glob("*.yaml")})
            msg = (f"command-line override '{culprit}': {key}: the recipe's defaults list picks no '{key}' config to"
                   f" replace; add one with '+{culprit.lstrip('+~')}'")
            msg += f" (options: {', '.join(options)})" if options else ""
        elif "not in struct" in cause or "Could not override" in text:
            valid = keys_at(parent)
            hint = nearest_key(path, parent, leaf)
            key = f"{parent}.{leaf}" if parent else leaf
            msg = f"command-line override '{culprit}': {key}: unknown key"
            msg += f" (did you mean '{parent + '.' if parent else ''}{hint}'?)" if hint else f" (valid keys: {', '.join(valid)})"
        else:
            msg = f"command-line override '{culprit}': {text}"
        return MlopsError(f"recipe {_display(path)} is invalid:\n  {msg}")
    return MlopsError(f"recipe {_display(path)} is invalid:\n  {text} {cause}".rstrip())


def _defaults_line(path: Path, group: str) -> int | None:
    """The 1-based line of `group`'s entry in the defaults list of config file `path`, if it has one."""
    try:
        read = _check_yaml(path)
    except (MlopsError, OSError):
        return None
    data = read.data
    defaults = data.get("defaults") if isinstance(data, dict) else None
    if not isinstance(defaults, list):
        return None
    for i, item in enumerate(defaults):
        keys = [str(k).removeprefix("override ").split("@")[0].strip() for k in item] if isinstance(item, dict) else []
        if group in keys or str(item).split("@")[0].strip() == group:
            return read.item_line(i)
    return None


def _check_files(path: Path, search: list[Path], overrides: list[str], groups: set[str]) -> None:
    """Every file the recipe's defaults lists reach (and the group options its overrides pick) checked before
    Hydra reads them: see `_check_yaml`; a defaults list that reaches its own file again is a cycle (Hydra's
    own answer is 'maximum recursion depth exceeded'), and `default:` is a misspelt `defaults:`."""

    def walk(file: Path, group: str, chain: list[Path]) -> None:
        read = _check_yaml(file)
        data = read.data
        if not isinstance(data, dict):
            return
        _check_defaults_key(file, read)
        defaults = data.get("defaults")
        if defaults is None:
            return
        if not isinstance(defaults, list):
            raise MlopsError(f"{_display(file)}:{read.key_lines.get('defaults', 1)}: defaults: a list of the configs this"
                             " file extends (`- base`, `- data: wine`, `- _self_`), not a single value")
        for i, item in enumerate(defaults):
            for name in _default_configs(item, group):
                target = _find_config_file(name, path, search)
                if target is None and isinstance(item, str) and closest(item.strip(), ["_self_"]):
                    # Hydra would take `- self` for a missing config, and warn that `_self_` is missing
                    raise MlopsError(f"{_display(file)}:{read.item_line(i)}: defaults: no config '{item.strip()}'"
                                     " (did you mean '_self_', where this file's own values merge?)")
                if target is None:  # Hydra words a missing config (`_composition_error`)
                    continue
                target = target.resolve()
                if target in chain:
                    where = f"{_display(file)}:{read.item_line(i)}: defaults: '{name}'"
                    if target == file:
                        raise MlopsError(f"{where} is this file itself: a config cannot extend itself (remove the line)")
                    cycle = " -> ".join(_display(f) for f in [*chain[chain.index(target):], target])
                    raise MlopsError(f"{where} closes a cycle of defaults lists: {cycle}")
                walk(target, name.rpartition("/")[0], [*chain, target])

    walk(path, "", [path])
    for o in overrides:  # `data=mine`: a group option that no defaults list names
        key, eq, value = o.lstrip("+~").partition("=")
        if eq and key in groups and value and (option := _find_config_file(f"{key}/{value}", path, search)):
            walk(option.resolve(), key, [option.resolve()])


def _default_configs(item: Any, group: str) -> list[str]:
    """The config paths (`deploy/triton`) a defaults list entry of a config in `group` names, as Hydra reads
    them: relative to that group unless they start with `/`; `_self_` and unset options (`???`, null) name none."""

    def in_group(name: str) -> str:
        name = name.split("@")[0].strip()
        return name[1:] if name.startswith("/") else f"{group}/{name}" if group else name

    if isinstance(item, str):
        name = item.removeprefix("optional ").strip()
        return [] if name == "_self_" else [in_group(name)]
    if not isinstance(item, dict) or len(item) != 1:
        return []
    [(key, value)] = item.items()
    sub = in_group(str(key).removeprefix("override ").removeprefix("optional ").strip())
    options = value if isinstance(value, list) else [value]
    return [f"{sub}/{o}" for o in options if isinstance(o, str) and o != "???"]


def _check_defaults_key(file: Path, read: _Read) -> None:
    """`default:` (or another near miss) where `defaults:` was meant: Hydra would take it for a recipe key and
    compose without the defaults list, and the errors would be about what that list should have brought."""
    if "defaults" in read.data:
        return
    known = set(keys_at(""))
    for key in read.data:
        if key not in known and closest(str(key), ["defaults"]):
            raise MlopsError(f"{_display(file)}:{read.key_lines.get(str(key), 1)}: {key}: unknown key; did you mean"
                             " 'defaults' (the list of configs this file extends)?")


@dataclass
class _Read:
    """A config file as `_check_yaml` read it: its data, and the lines that its checks' messages name."""

    data: Any
    key_lines: dict[str, int]  # each top-level key's 1-based line
    defaults_lines: list[int]  # the line of each item of its top-level `defaults` list, as written in it

    def item_line(self, i: int) -> int:
        """The line of the defaults list's item `i`; the `defaults` key's when the list is not written out
        under it (`defaults: *shared`, a merge key)."""
        if i < len(self.defaults_lines):
            return self.defaults_lines[i]
        return self.key_lines.get("defaults", 1)


def _check_yaml(file: Path) -> _Read:
    """The file read, once it is known to be safe to read: at most
    MAX_FILE_BYTES, lists and mappings at most MAX_DEPTH deep, at most MAX_VALUES values once its aliases are
    expanded (`a: &a [x, x]`, `b: &b [*a, *a]`, ... doubles at each line: a few hundred bytes that OmegaConf
    would spend minutes expanding), and a mapping. The parser's events are counted, each anchor's expanded
    size once, so the check costs one pass over the file however large the expansion. A key twice in one mapping
    is refused at its second line (YAML would keep one of the two, and which one the reader decides). The lines
    come from the same pass: a reader that keeps positions (ruamel's round-trip) cost more than the rest of the
    check, and PyYAML is what OmegaConf itself reads the file with."""
    import yaml

    size = file.stat().st_size
    if size > MAX_FILE_BYTES:
        raise MlopsError(f"{_display(file)}: {size} bytes; a recipe or config file may have at most {MAX_FILE_BYTES}")
    text = file.read_text(errors="replace")
    sizes: dict[str, int] = {}  # anchor -> values it expands to
    open_: list[list[Any]] = [[None, 0]]  # [anchor, values so far] of each open list or mapping; first: the file
    keys: list[_Keys | None] = [None]  # the keys of each open mapping (None: a list, or the file)
    defaults_lines: list[int] = []
    top_keys: _Keys | None = None  # the file's own mapping, when it is one
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        for event in yaml.parse(text, Loader=loader):
            line = event.start_mark.line + 1
            if isinstance(event, yaml.NodeEvent):
                _check_key(file, line, event, keys)
                top, value = keys[1:3] if len(keys) == 3 else (None, None)
                if top is not None and top.key == "defaults" and value is not None and value.lines is None:
                    defaults_lines.append(line)
                if isinstance(event, yaml.CollectionStartEvent):
                    keys.append(_Keys() if isinstance(event, yaml.MappingStartEvent) else _Keys(lines=None))
                    top_keys = keys[1] if len(keys) == 2 else top_keys
            elif isinstance(event, yaml.CollectionEndEvent):
                keys.pop()
            if isinstance(event, yaml.NodeEvent) and len(open_) == 1 and not open_[0][1]:
                _check_top(file, line, event)
            if isinstance(event, yaml.CollectionStartEvent):
                open_.append([event.anchor, 1])
                if len(open_) > MAX_DEPTH:
                    raise MlopsError(f"{_display(file)}:{line}: lists and mappings nested more than {MAX_DEPTH} deep")
                continue
            if isinstance(event, yaml.CollectionEndEvent):
                anchor, n = open_.pop()
            elif isinstance(event, yaml.ScalarEvent):
                anchor, n = event.anchor, 1
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in sizes:
                    raise MlopsError(f"{_display(file)}:{line}: alias *{event.anchor} names no anchor &{event.anchor}"
                                     " defined before it (and outside it)")
                anchor, n = None, sizes[event.anchor]
            else:
                continue
            if anchor is not None:
                sizes[anchor] = n
            open_[-1][1] += n
            if open_[-1][1] > MAX_VALUES:
                raise MlopsError(f"{_display(file)}:{line}: its YAML aliases expand to more than {MAX_VALUES} values;"
                                 " write the values out instead")
        data = yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader (the C one when built)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise MlopsError(f"{_display(file)}:{mark.line + 1 if mark else 1}: not valid YAML: {exc.problem}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a control character)
        line = text.count("\n", 0, exc.position) + 1
        code = ord(exc.character) if isinstance(exc.character, str) else exc.character  # the C reader: a number
        char = f"#x{code:04x}" if isinstance(code, int) else repr(code)
        raise MlopsError(f"{_display(file)}:{line}: not valid YAML: character {char}: {exc.reason}") from None
    return _Read(data, dict(top_keys.lines or {}) if top_keys else {}, defaults_lines)


@dataclass
class _Keys:
    """One open mapping (or list) while `_check_yaml` reads the file: where each key was first seen, and the
    key (or index) of the node being read, for the dotted path of a duplicate."""

    lines: dict[str, int] | None = field(default_factory=dict)  # None: a list
    key: str | None = None
    value_next: bool = False  # a mapping's next node is the value of `key`
    items: int = -1


def _check_key(file: Path, line: int, event: Any, keys: list[_Keys | None]) -> None:
    """Note a mapping key (refusing one seen before in the same mapping), the value that follows it, or a list
    item."""
    import yaml

    top = keys[-1]
    if top is None:
        return
    if top.lines is None:
        top.items += 1
        top.key = str(top.items)
        return
    if top.value_next:
        top.value_next = False
        return
    key = str(event.value) if isinstance(event, yaml.ScalarEvent) else "?"
    top.value_next = True
    top.key = key
    if key in top.lines and isinstance(event, yaml.ScalarEvent):
        path = ".".join(k.key for k in keys if k is not None and k.key is not None)
        raise MlopsError(f"{_display(file)}:{line}: {path}: the key appears twice in one mapping (first at line "
                         f"{top.lines[key]}); YAML would keep only one of the two values: remove or merge one")
    top.lines.setdefault(key, line)


def _check_top(file: Path, line: int, event: Any) -> None:
    """A recipe or config file is a mapping (or empty): a list or a lone value composes to nothing Hydra can use."""
    import yaml

    if isinstance(event, yaml.MappingStartEvent):
        return
    if isinstance(event, yaml.ScalarEvent) and event.value in ("", "~", "null") and event.implicit[0]:
        return
    listed = isinstance(event, yaml.SequenceStartEvent)
    raise MlopsError(f"{_display(file)}:{line}: the file is {'a YAML list' if listed else 'a single value'}; a recipe"
                     " or config file is a mapping of keys (`defaults:`, `name:`, `data:`, ...)"
                     + (": remove the leading '- '" if listed else ""))
