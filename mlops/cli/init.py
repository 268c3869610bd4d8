"""`mlops init DIR`: a new project whose recipes use the config groups shipped with mlops.

It writes one recipe, the project's own `configs/` (only its data: every other group comes from the package,
unless the project adds a file of the same name) and a `.gitignore` for the workspace. It never overwrites a
file: an existing `.gitignore` gets the workspace's line appended, any other file already there stops it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mlops.core.atomic import write_text
from mlops.core.errors import MlopsError

SCAFFOLD = Path(__file__).parent / "project"  # package data: the files of a new project
NAME = "__NAME__"  # in the scaffold's paths and texts: the project's name
GITIGNORE = ".gitignore"


def project_name(directory: Path) -> str:
    """The folder's name as a recipe and model name: `My Project` -> `my_project`."""
    name = re.sub(r"[^a-z0-9]+", "_", directory.resolve().name.lower()).strip("_")
    return name if name[:1].isalpha() else f"project_{name}".rstrip("_")


def scaffold(name: str) -> dict[str, str]:
    """A new project's files: path relative to its root -> text."""
    files = {}
    for template in sorted(p for p in SCAFFOLD.rglob("*") if p.is_file()):
        rel = template.relative_to(SCAFFOLD).as_posix().replace(NAME, name)
        files["." + rel if rel == GITIGNORE.lstrip(".") else rel] = fill(template.read_text(), name)
    return files


def fill(text: str, name: str) -> str:
    """The template with the project's name, a comment after it kept in its column (the others' column)."""
    text = re.sub(f"{NAME}( +)#", lambda m: name + " " * max(1, len(NAME) + len(m[1]) - len(name)) + "#", text)
    return text.replace(NAME, name)


def cmd_init(args: argparse.Namespace) -> int:
    if not args.directory.strip():  # an unset shell variable ("$DIR"): Path("") would be this folder
        raise MlopsError(f"mlops init {args.directory!r}: expected a folder (. for this one)")
    root = Path(args.directory)
    if root.exists() and not root.is_dir():
        raise MlopsError(f"mlops init: {root} is a file, not a folder")
    name = project_name(root)
    files = scaffold(name)
    taken = [rel for rel in files if rel != GITIGNORE and (root / rel).exists()]
    if taken:
        raise MlopsError(f"mlops init: {root} already has {', '.join(taken)}; mlops init writes only new files: "
                         "move them aside or pick another folder")
    for rel, text in files.items():
        ignore = root / rel
        if rel == GITIGNORE and ignore.is_file():
            kept = ignore.read_text()
            if ".mlops/" in kept.split():
                continue
            text = kept + ("" if kept.endswith("\n") or not kept else "\n") + text
        write_text(root / rel, text)
    recipe = f"recipes/{name}.yaml"
    print(f"created project '{name}' in {root}: {', '.join(sorted(files))}\n"
          "next steps:\n"
          f"  cd {root}\n"
          f"  mlops validate {recipe}   # from this folder or any folder below it\n"
          f"  mlops run {recipe}        # about a minute: train, evaluate, export to ONNX, register\n"
          f"  mlops serve {name}@champion\n"
          f"then put your own rows in configs/data/tumours.yaml (path:, target:); config groups not in configs/ "
          "come with mlops (see docs/projects.md)")
    return 0
