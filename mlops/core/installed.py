"""What is installed: distributions' versions, read from their metadata (never by importing them) once per
process, and remembered across processes in the workspace by `remembered_versions`; `read_stamped` and
`write_stamped` are the memo any such reading keeps (the environment lock's pip freeze too).

Reading one version parses the distribution's whole METADATA file with the email parser (about 2 ms each, a
plan reads eight); the memo is keyed by `installed_stamp`, so an install, upgrade or removal reads them again.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlops.core.atomic import write_json

ABSENT = "absent"

_versions: dict[str, str] = {}  # distribution -> its installed version (ABSENT), for the process's life
_read_under: list[list[str | int]] | None = None  # the installed_stamp `_versions` was checked against last

# what names a directory that holds distributions (or points to them: an editable install's .pth)
_DISTRIBUTION_SUFFIXES = (".dist-info", ".egg-info", ".pth")


def installed_stamp() -> list[list[str | int]]:
    """The directories on sys.path that hold distributions, with their modification times: installing,
    upgrading or removing one adds or removes a `*.dist-info` (or a `.pth`) in such a directory, which changes
    its time. Directories without any (the script's own, the working directory under `python -m`, whose
    times change with every file written there) are left out, so they do not throw away what is remembered."""
    stamp: list[list[str | int]] = []
    for entry in sys.path:
        try:
            if entry and any(name.endswith(_DISTRIBUTION_SUFFIXES) for name in os.listdir(entry)):
                stamp.append([entry, os.stat(entry).st_mtime_ns])
        except OSError:  # not a directory (a zip), or gone
            continue
    return stamp


def version(distribution: str) -> str:
    """The installed version of `distribution`, or ABSENT."""
    found = _versions.get(distribution)
    if found is None:
        try:
            found = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            found = ABSENT
        _versions[distribution] = found
    return found


def read_stamped(file: Path, stamp: list[list[str | int]], key: str) -> Any:
    """What `file` remembers under `key`, when it was written under `stamp` (nothing installed since); None
    otherwise (none yet, another stamp, unreadable)."""
    try:
        saved = json.loads(file.read_text())
        return saved[key] if saved["stamp"] == stamp else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_stamped(file: Path, stamp: list[list[str | int]], key: str, value: Any) -> None:
    """Remember `value` in `file` as `key`, under `stamp`; a read-only workspace only makes the next read slower."""
    with contextlib.suppress(OSError):
        write_json(file, {"stamp": stamp, key: value})


@contextmanager
def remembered_versions(file: Path) -> Iterator[None]:
    """Versions read from `file` before the block, when nothing was installed since it was written, and written
    back after it when the block read any new one. What this process read before an install is forgotten
    first (a long-lived process, a sweep, a notebook, must not write an old version under the new stamp), and
    nothing is written when something was installed while the block ran."""
    global _read_under
    stamp = installed_stamp()
    if _read_under != stamp:
        _versions.clear()
        _read_under = stamp
    saved = read_stamped(file, stamp, "versions")
    if isinstance(saved, dict):
        _versions.update({d: v for d, v in saved.items() if isinstance(v, str) and d not in _versions})
    before = len(_versions)
    yield
    if len(_versions) != before and installed_stamp() == stamp:
        write_stamped(file, stamp, "versions", _versions)
