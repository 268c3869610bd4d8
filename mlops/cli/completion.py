"""Shell completion, spelt as Hydra spells it: `eval "$(mlops -sc install=bash)"` (zsh: run
`autoload -U bashcompinit && bashcompinit` first). The script it prints asks `mlops -sc query=bash` for the
candidates of the word under the cursor, so completion follows this version's commands, flags, config groups
and recipe keys without a file to regenerate:

- a command (`mlops ru<TAB>`), a command's flags (`mlops run --al<TAB>`);
- after a recipe: a config group's options (`model=<TAB>`, read from the recipe's search path), and recipe
  keys one level at a time (`trainer.<TAB>`), from the schema;
- anything else (a recipe or file path): nothing, and bash completes file names (`complete -o default`).

Light: argparse, the schema and a directory listing; nothing is composed and no heavy library is imported.
"""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from mlops.core.errors import MlopsError
from mlops.recipe.compose import config_search_path
from mlops.recipe.suggest import keys_at, model_at

BASH_SCRIPT = """_mlops_complete() {
    local IFS=$'\\n'
    COMPREPLY=($(COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" COMP_WORDBREAKS="$COMP_WORDBREAKS" \\
        command mlops -sc query=bash 2>/dev/null))
    if [[ ${#COMPREPLY[@]} -eq 1 && ${COMPREPLY[0]} == *[=.] ]]; then compopt -o nospace; fi
}
complete -o default -F _mlops_complete mlops
"""
DEFAULT_WORDBREAKS = "\"'><=;|&(:"


def cmd_shell_completion(args: argparse.Namespace) -> int:
    action, _, shell = str(args.shell_completion).partition("=")
    if shell != "bash" or action not in ("install", "uninstall", "query"):
        raise MlopsError(f"--shell-completion {args.shell_completion}: use install=bash, uninstall=bash or "
                         "query=bash (zsh: `autoload -U bashcompinit && bashcompinit`, then install=bash)")
    if action == "install":
        print(BASH_SCRIPT, end="")
    elif action == "uninstall":
        print("complete -r mlops 2>/dev/null; unset -f _mlops_complete")
    else:
        line = os.environ.get("COMP_LINE", "")
        point = int(os.environ.get("COMP_POINT", len(line)))
        breaks = os.environ.get("COMP_WORDBREAKS", DEFAULT_WORDBREAKS)
        for candidate in candidates(line[:point], breaks):
            print(candidate)
    return 0


def candidates(line: str, wordbreaks: str = DEFAULT_WORDBREAKS) -> list[str]:
    """What may complete the last word of `line` (a command line up to the cursor), as bash wants them: bash
    replaces only the part of the word after its last word-break character (`=`, `:`), so that part is cut."""
    from mlops.cli.parser import build_parser

    try:
        words = shlex.split(line)
    except ValueError:  # an open quote: complete nothing rather than guess
        return []
    current = "" if not line or line[-1].isspace() else words.pop()
    words = words[1:]  # the program's name
    found = sorted(set(_complete(build_parser(), words, current)))
    cut = max((current.rfind(c) for c in wordbreaks), default=-1) + 1
    return [c[cut:] for c in found if c.startswith(current)]


def _complete(parser: argparse.ArgumentParser, words: list[str], current: str) -> list[str]:
    subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if subs is not None:
        chosen = next((w for w in words if w in subs.choices), None)
        if chosen is not None:
            return _complete(subs.choices[chosen], words[words.index(chosen) + 1:], current)
    options = [s for a in parser._actions for s in a.option_strings if s.startswith("--") or len(s) == 2]
    if current.startswith("-"):
        return options
    if subs is not None:
        return list(subs.choices)
    if words and words[-1] in options:  # the value of an option: a path or free text, left to bash
        action = next(a for a in parser._actions if words[-1] in a.option_strings)
        if action.nargs != 0:
            return [str(c) for c in action.choices or []]
    dests = {a.dest for a in parser._actions}
    recipe = next((w for w in words if w.endswith((".yaml", ".yml")) and Path(w).is_file()), None)
    if "overrides" in dests and recipe is not None:
        return _overrides(Path(recipe), current)
    return []


def _overrides(recipe: Path, current: str) -> list[str]:
    """`group=option` for the recipe's config groups, and schema keys: `trainer.` then `trainer.max_epochs=`."""
    search = [recipe.resolve().parent, *config_search_path(recipe.resolve())]
    groups: dict[str, set[str]] = {}
    for base in search:
        for d in (p for p in base.iterdir() if p.is_dir()):
            groups.setdefault(d.name, set()).update(f.stem for f in d.glob("*.yaml"))
    key, eq, _ = current.lstrip("+~").partition("=")
    prefix = current[:len(current) - len(current.lstrip("+~"))]
    if eq:
        return [f"{prefix}{key}={o}" for o in groups.get(key, ())]
    parent = key.rpartition(".")[0]
    found = [f"{prefix}{g}=" for g in groups if not parent]
    for leaf in keys_at(parent):
        full = f"{parent}.{leaf}" if parent else leaf
        found.append(f"{prefix}{full}." if model_at(full) is not None else f"{prefix}{full}=")
    return found
