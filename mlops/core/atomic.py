"""Files and directories that appear whole or not at all.

A reader (another process, a crash-restarted run, a browser reloading a report) sees the old content or the
new one, never half of one: everything is written to a unique temporary name beside its destination, flushed
and renamed over it. `durable=True` also fsyncs the file and its directory, for what must survive power loss.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlops.core.errors import MlopsError


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def output_problem(path: Path, directory: bool = False) -> str | None:
    """What keeps `path` from being written as a file (or created as a `directory`), None when nothing does:
    the path is the other kind, or a file stands where one of its parent directories should be."""
    if path.exists():
        if directory and not path.is_dir():
            return "is a file, not a directory: give a directory (it is created if missing)"
        if not directory and path.is_dir():
            return "is a directory: give a file path"
        return None
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a directory, so nothing can be created under it"
            return None
    return None


def check_output(path: str | Path, what: str, directory: bool = False) -> Path:
    """`path` as given for `what` (a flag, such as `-o`), checked before any work is done: MlopsError naming
    both when it cannot be written as a file (or created as a `directory`)."""
    path = Path(path)
    problem = output_problem(path, directory)
    if problem:
        raise MlopsError(f"{what} {path}: {problem}")
    return path


@contextmanager
def replacing(path: str | Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that needs a file name (pyarrow, Evidently, matplotlib);
    renamed over `path` when the block ends without an error, removed when it raises."""
    path = check_output(path, "cannot write")  # a user's path under a file, or a directory, is their mistake
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes, *, durable: bool = False) -> Path:
    path = Path(path)
    with replacing(path, durable=durable) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | Path, text: str, *, durable: bool = False) -> Path:
    return write_bytes(path, text.encode("utf-8"), durable=durable)


def write_json(path: str | Path, data: Any, *, durable: bool = False, indent: int | None = 2) -> Path:
    """JSON of `data`; what JSON cannot hold (paths, numpy scalars, datetimes) is written as its text."""
    return write_text(path, json.dumps(data, indent=indent, default=str) + "\n", durable=durable)


@contextmanager
def publishing(dest: str | Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """A fresh temporary directory beside `dest` to fill; it becomes `dest` when the block ends without an
    error, and is removed when it raises.

    `keep_existing`: a `dest` that appeared meanwhile (a concurrent writer of the same content, such as two
    sweep trials computing one cached step) is kept and ours dropped. Otherwise an existing `dest` is replaced.
    """
    dest = check_output(dest, "cannot write", directory=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        yield tmp
        if dest.exists() and not keep_existing:
            shutil.rmtree(dest)
        try:
            tmp.rename(dest)
        except OSError:
            if not (keep_existing and dest.exists()):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(dest: str | Path, fill: Callable[[Path], Any], *, keep_existing: bool = False) -> Any:
    """`fill(tmp_dir)` then publish it as `dest` (see `publishing`); returns what `fill` returned."""
    with publishing(dest, keep_existing=keep_existing) as tmp:
        return fill(tmp)
