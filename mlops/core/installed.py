"""What is installed: distributions' versions, read from their metadata (never by importing them) once per
process, and remembered across processes in the workspace by `remembered_versions`.

Reading one version parses the distribution's whole METADATA file with the email parser (about 2 ms each, a
plan reads eight); the memo is keyed by `installed_stamp`, so an install, upgrade or removal reads them again.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlops.core.atomic import write_json

ABSENT = "absent"

_versions: dict[str, str] = {}  # distribution -> its installed version (ABSENT), for the process's life


def installed_stamp() -> list[list[str | int]]:
    """The directories Python finds modules and distributions in, with their modification times: installing,
    upgrading or removing a distribution adds or removes a `*.dist-info` (or a `.pth`) in one, which changes
    that directory's time."""
    return [[entry, os.stat(entry).st_mtime_ns] for entry in sys.path if entry and os.path.isdir(entry)]


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


@contextmanager
def remembered_versions(file: Path) -> Iterator[None]:
    """Versions read from `file` before the block, when nothing was installed since it was written, and written
    back after it when the block read any new one."""
    stamp = installed_stamp()
    try:
        saved = json.loads(file.read_text())
        if saved["stamp"] == stamp:
            for distribution, found in saved["versions"].items():
                _versions.setdefault(distribution, found)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # none yet, or unreadable: read the metadata and write a fresh one
    before = len(_versions)
    yield
    if len(_versions) != before:
        try:
            write_json(file, {"stamp": stamp, "versions": _versions})
        except OSError:
            pass  # a read-only workspace: the versions are right all the same, only slower to read next time
