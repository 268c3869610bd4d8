"""The code version of a step, derived from what its code imports instead of a hand-written file list.

A list goes stale the day someone adds an import; the import graph cannot. A step's version hashes the
source of every module its own step module can reach through imports, found statically: `ast` finds the
`import` statements at module level and inside functions, and a module's file is located on disk, never
imported (so `mlops plan` loads no training or serving library). Reaching `a.b.c` reaches `a` and `a.b`
too: their `__init__.py` run on import. Only the packages given as roots are followed; for the rest, the
top-level name is noted so the version of a library that shapes results can join the key.

Parsed modules are cached by path, mtime and size: per process (a sweep or a test compiles many plans) and
in the workspace (`remembered_parses`), so `mlops plan` parses only the files that changed since the last one.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlops.core import installed
from mlops.core.atomic import write_json

# libraries whose version changes what a step computes, by the name code imports them under -> distribution
LIBRARIES = {"numpy": "numpy", "sklearn": "scikit-learn", "torch": "torch", "lightning": "lightning",
             "onnx": "onnx", "onnxruntime": "onnxruntime"}

# top-level name -> where its modules live: the package's directories (like a spec's
# submodule_search_locations), or the file of a top-level module that is not a package
Roots = Mapping[str, tuple[Path, ...] | Path]


@dataclass(frozen=True)
class Source:
    """One parsed module: the hash of its bytes and every dotted name its code may import."""

    digest: str
    imports: frozenset[str]


@dataclass(frozen=True)
class Closure:
    """The modules reached from some start modules, and the libraries (top-level names) they import."""

    modules: tuple[tuple[str, str], ...]  # (dotted name, source digest), sorted by name
    external: frozenset[str]

    def digest(self) -> str:
        h = hashlib.sha256()
        for name, digest in self.modules:  # names, not paths: a key must not depend on where mlops is installed
            h.update(f"{name}\0{digest}\n".encode())
        return h.hexdigest()


_parsed: dict[tuple[str, str, int, int], Source] = {}  # (path, module, mtime_ns, size): lives as long as the process


def parse(path: Path, module: str, is_package: bool) -> Source:
    """The module at `path`, as `module` (relative imports resolve against it); parsed once per version."""
    st = path.stat()
    key = (str(path), module, st.st_mtime_ns, st.st_size)
    found = _parsed.get(key)
    if found is None:
        data = path.read_bytes()
        found = Source(hashlib.sha256(data).hexdigest(), frozenset(imported_names(syntax_tree(data), module, is_package)))
        _parsed[key] = found
    return found


def syntax_tree(data: bytes, attempts: int = 3) -> ast.Module:
    """`ast.parse`, again when CPython 3.11 fails it with "AST constructor recursion depth mismatch": its counter
    is per interpreter, not per thread, so a library's background thread building an AST at the same moment (Prefect
    and MLflow run several during `mlops run`) can fail a parse of perfectly good source (python/cpython#106905;
    seen once in CI). Any other error, or the same one every time, is raised."""
    for _ in range(attempts - 1):
        try:
            return ast.parse(data)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
    return ast.parse(data)


@contextmanager
def remembered_parses(file: Path) -> Iterator[None]:
    """Parses read from `file` before the block and written back after it when the block parsed anything new:
    parsing is most of what a plan's code versions cost (about 0.4 s of CPU for the 80 modules of a plan).
    Keyed like the process cache, by path, mtime and size, so an edited module is parsed again."""
    try:
        for path, module, mtime, size, digest, imports in json.loads(file.read_text()):
            _parsed.setdefault((path, module, mtime, size), Source(digest, frozenset(imports)))
    except (OSError, ValueError, TypeError):
        pass  # none yet, or unreadable: parse again and write a fresh one
    before = len(_parsed)
    yield
    if len(_parsed) != before:
        try:
            write_json(file, [[*key, src.digest, sorted(src.imports)] for key, src in _parsed.items()
                              if _current(key)], indent=None)
        except OSError:
            pass  # a read-only workspace: the plan is right all the same, only slower next time


def _current(key: tuple[str, str, int, int]) -> bool:
    """Whether a remembered parse is of the file as it is now: an edited or deleted module's older parses are
    not written back, so the memo holds one entry a module and does not grow with every edit."""
    path, _, mtime, size = key
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_mtime_ns, st.st_size) == (mtime, size)


def imported_names(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """Absolute dotted names `tree` imports anywhere, functions included. `from a import b` yields `a` and
    `a.b`: whether `b` is a submodule or an attribute only the file system can tell, so the caller checks."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 >= len(parts):
                    continue  # climbs above the top-level package: fails at import time, nothing to hash
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _statements(tree: ast.Module) -> Iterator[ast.AST]:
    """Every statement, at any depth. An import is a statement, so expressions need not be visited: this
    is several times faster than `ast.walk`, and parsing is most of what `mlops plan` spends here."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(node, name, None)
            if isinstance(block, list):  # a lambda's or conditional expression's `body` is one expression
                stack.extend(block)


def locate(module: str, roots: Roots) -> tuple[Path, bool] | None:
    """(file, is_package) of `module` if it lies under one of `roots`; None for an attribute or a module
    outside them. A namespace package (a directory without `__init__.py`) has no source of its own."""
    top, *rest = module.split(".")
    root = roots.get(top)
    if root is None:
        return None
    if isinstance(root, Path):  # a single-file top-level module has no submodules
        return (root, False) if not rest else None
    for base in root:
        target = base.joinpath(*rest)
        if (target / "__init__.py").is_file():
            return target / "__init__.py", True
        if rest and target.with_name(target.name + ".py").is_file():
            return target.with_name(target.name + ".py"), False
    return None


class Snapshot:
    """One read of the source tree for one plan: each module located and parsed once, however many
    closures reach it (every step reaches `mlops/__init__.py`, the recipe schema, ...)."""

    def __init__(self) -> None:
        self._modules: dict[tuple[str, tuple[Path, ...] | Path], Source | None] = {}

    def module(self, name: str, roots: Roots) -> Source | None:
        """The parsed source of `name` under `roots`, or None if it is not a module there."""
        root = roots.get(name.split(".")[0])
        if root is None:
            return None
        key = (name, root)
        if key not in self._modules:
            found = locate(name, roots)
            self._modules[key] = parse(found[0], name, found[1]) if found else None
        return self._modules[key]

    def closure(self, start: Iterable[str], roots: Roots) -> Closure:
        """Every module under `roots` that importing `start` can reach, through any import in any function."""
        seen: dict[str, str] = {}
        external: set[str] = set()
        todo = list(start)
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            source = self.module(name, roots)
            if source is None:
                continue
            seen[name] = source.digest
            parts = name.split(".")
            todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages run first
            for imported in source.imports:
                top = imported.split(".")[0]
                if top in roots:
                    todo.append(imported)
                elif top:
                    external.add(top)
        return Closure(tuple(sorted(seen.items())), frozenset(external))

    def target(self, target: str, package_dir: Path) -> Closure | None:
        """The code behind a dotted `_target_` (`pkg.module.Name`); None if no source file can be found
        (the run will fail on it; `mlops validate` says why)."""
        module = target.rpartition(".")[0]
        roots = user_roots(module, package_dir)
        if self.module(module, roots) is None:
            return None
        return self.closure([module], roots)


def user_roots(module: str, package_dir: Path) -> dict[str, tuple[Path, ...] | Path]:
    """Roots for following the code of `module` (a recipe's `_target_`): its own top-level package, found
    with `find_spec` on the top-level name only (a dotted name would import its parents), plus mlops
    itself, which a user's module may build on. Other packages are not followed: for the libraries that
    shape results (`LIBRARIES`) their installed versions join the key instead."""
    roots: dict[str, tuple[Path, ...] | Path] = {"mlops": (package_dir,)}
    top = module.split(".")[0]
    if top == "mlops":
        return roots
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        roots[top] = tuple(Path(p) for p in spec.submodule_search_locations)
    elif spec is not None and spec.origin and spec.origin.endswith(".py"):
        roots[top] = Path(spec.origin)
    return roots


def libraries(external: Iterable[str]) -> dict[str, str]:
    """The versions of the result-shaping libraries among the imported top-level names."""
    return {LIBRARIES[n]: installed.version(LIBRARIES[n]) for n in sorted(set(external)) if n in LIBRARIES}
