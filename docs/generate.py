"""Generate the reference pages and fill the recipe blocks of the docs.

    .venv/bin/python docs/generate.py            # rewrite what is out of date (what `make docs` runs)
    .venv/bin/python docs/generate.py --check    # write nothing; exit 1 naming each out-of-date file

It writes:

* docs/reference/recipe.md from the pydantic schema (`mlops.recipe.schema.Recipe` and every model it nests):
  each key's path, type, default and description, one table per section;
* docs/reference/cli.md from the argument parser (`mlops.cli.build_parser()`): every command and
  subcommand with its usage, arguments and help;
* every block between `<!-- recipe:PATH -->` and `<!-- /recipe -->` in README.md and docs/**/*.md: the file
  at PATH (relative to the repository root), verbatim, in a yaml fence.

The output depends only on the schema, the parser and the files it embeds: no time stamps, no terminal width.
Only the schema and the parser are imported (no torch, mlflow or prefect), so it runs in about a second.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RECIPE_PAGE = DOCS / "reference" / "recipe.md"
CLI_PAGE = DOCS / "reference" / "cli.md"
FIX = "make docs"
BLOCK = re.compile(r"(?P<open><!-- recipe:(?P<path>[^\s>]+) -->\n)(?P<body>.*?)(?P<close><!-- /recipe -->)", re.S)
USAGE_WIDTH = 100  # usage lines are wrapped at a fixed width, never the terminal's


# --- Markdown helpers ------------------------------------------------------------------------------------------

def md_text(text: str) -> str:
    """Prose for a table cell: one line, pipes escaped, and `<name>` outside code spans kept from being read as
    an HTML tag."""
    text = " ".join(text.split()).replace("|", "\\|")
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        parts[i] = re.sub(r"<(?=[A-Za-z/!?])", "&lt;", parts[i])
    return "`".join(parts)


def code(value: str, escape: bool = True) -> str:
    """A code span; `escape=False` for text that `md_text` will escape later."""
    if escape:
        value = value.replace("|", "\\|")
    return f"`` {value} ``" if "`" in value else f"`{value}`"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return lines


# --- The recipe reference --------------------------------------------------------------------------------------

def is_model(tp: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(tp, type) and issubclass(tp, BaseModel)


def constraints(metadata: list[Any], unit: str) -> list[str]:
    """Human-readable bounds from pydantic / annotated-types metadata (Gt, Ge, MinLen, a pattern ...)."""
    out: list[str] = []
    for item in metadata:
        inner = getattr(item, "metadata", None)
        if isinstance(inner, list):  # a FieldInfo inside Annotated[...]
            out += constraints(inner, unit)
            continue
        for attr, symbol in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{symbol} {json.dumps(value)}")
        for attr, word in (("min_length", "at least"), ("max_length", "at most")):
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{word} {value} {unit}")
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            out.append(f"matching {code(str(pattern), escape=False)}")
    return out


def type_name(tp: Any, metadata: list[Any] | None = None) -> str:
    """A type as a reader of YAML thinks of it: `int (> 0)`, `one of `a`, `b``, `list of float`, `section`."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return type_name(args[0], list(tp.__metadata__) + list(metadata or []))
    if tp is type(None):
        name = "null"
    elif tp is Any:
        name = "any"
    elif origin is Literal:
        values = [code(str(a), escape=False) for a in args]
        name = values[0] if len(values) == 1 else "one of " + ", ".join(values)
    elif origin in (Union, types.UnionType):
        name = " or ".join(dict.fromkeys(type_name(a) for a in args))  # once each: `section or null`
    elif origin is list:
        name = f"list of {type_name(args[0])}" if args else "list"
    elif origin is dict:
        name = f"map of {type_name(args[0])} to {type_name(args[1])}" if args else "map"
    elif is_model(tp):
        name = "section"
    elif isinstance(tp, type):
        name = {"str": "string", "bool": "boolean"}.get(tp.__name__, tp.__name__)
    else:
        name = str(tp)
    bounds = constraints(metadata or [], "items" if name.startswith(("list", "map")) else "characters")
    return f"{name} ({', '.join(bounds)})" if bounds else name


def nested_models(tp: Any, suffix: str = "") -> list[tuple[str, Any]]:
    """The sections a field's type holds, each with what its key path gains on the way: `[]` for a list item,
    `.<name>` for a map entry."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return nested_models(args[0], suffix)
    if origin in (Union, types.UnionType):
        return [found for a in args for found in nested_models(a, suffix)]
    if origin is list and args:
        return nested_models(args[0], suffix + "[]")
    if origin is dict and len(args) == 2:
        return nested_models(args[1], suffix + ".<name>")
    return [(suffix, tp)] if is_model(tp) else []


def default_text(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:  # a factory that needs the validated data
            return " "
    else:
        value = field.default
    if value is PydanticUndefined:
        return " "
    if is_model(type(value)):
        return "(section)"
    if isinstance(value, str):
        return code(value) if value else '`""`'
    return code(json.dumps(value, sort_keys=True))


def first_sentence(doc: str | None) -> str:
    """The first sentence: up to a full stop followed by a capital letter (not `e.g.`, not `...`)."""
    text = " ".join((doc or "").split())
    match = re.match(r"(.+?(?<!e\.g)(?<!i\.e)(?<!\.\.)\.)(\s+[A-Z]|$)", text)
    return match.group(1) if match else text


def variant_label(model: Any) -> str:
    """A union member's name for the reader: its discriminator value (`type: float`), else its class name."""
    for name, field in model.model_fields.items():
        if get_origin(field.annotation) is Literal and len(get_args(field.annotation)) == 1:
            return f"{field.alias or name}: {get_args(field.annotation)[0]}"
    return model.__name__


def own_doc(model: Any) -> str:
    """A model's docstring, or nothing when it only inherits one (pydantic's BaseModel has its own)."""
    doc = model.__dict__.get("__doc__")
    return " ".join(doc.split()) if doc else ""


def section_pages(model: Any, path: str, level: int, label: str = "") -> Iterator[list[str]]:
    """A heading and a table of `model`'s keys under `path`, then the same for each section it nests."""
    heading = f"{'#' * level} {md_text(path)}" + (f" ({label})" if label else "")
    lines = [heading, ""]
    if own_doc(model):
        lines += [md_text(own_doc(model)), ""]
    rows: list[list[str]] = []
    children: list[tuple[Any, str, str]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        nested = nested_models(field.annotation)
        description = field.description or ""
        if nested and not description:
            description = first_sentence(own_doc(nested[0][1]))
        rows.append([code(f"{path}.{key}" if path else key), md_text(type_name(field.annotation, field.metadata)),
                     default_text(field), md_text(description)])
        many = len(nested) > 1
        for suffix, child in nested:
            children.append((child, f"{path}.{key}{suffix}" if path else f"{key}{suffix}",
                             variant_label(child) if many else ""))
    lines += table(["key", "type", "default", "description"], rows)
    yield lines
    for child, child_path, child_label in children:
        yield from section_pages(child, child_path, min(level + 1, 3), child_label)


def recipe_reference() -> str:
    from mlops.recipe.schema import Recipe

    top = [name for name, f in Recipe.model_fields.items() if nested_models(f.annotation)]
    lines = [
        "# Recipe reference",
        "",
        "<!-- generated by docs/generate.py from mlops.recipe.schema.Recipe: do not edit; run `make docs` -->",
        "",
        "Every key a recipe may set, with its type, its default and what it does. The tables are generated from "
        "the pydantic schema, which is what `mlops validate` checks: a key that is not here is an error.",
        "",
        "A key path such as `trainer.early_stopping.patience` is written nested in YAML, or as one Hydra "
        "override on the command line (`mlops run recipes/quickstart.yaml trainer.early_stopping.patience=8`). "
        "`[]` stands for each item of a list (`evaluate.gates[].metric`) and `<name>` for a key you choose in "
        "a map (`monitor.drift.features.<name>.key`). A section whose default is `null` is off until you "
        "set it; `(section)` means its keys take the defaults listed below it.",
        "",
        "`mlops schema --out recipe.schema.json` writes the same schema as JSON Schema, for an editor.",
        "",
        "Sections: " + ", ".join(f"[{name}](#{name})" for name in top) + ".",
        "",
    ]
    pages = list(section_pages(Recipe, "", 1))
    first = pages[0]
    lines += ["## Top level", ""] + first[2:] + [""]  # the root model has no path: give it a heading of its own
    for page in pages[1:]:
        lines += page + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --- The command-line reference --------------------------------------------------------------------------------

def usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=USAGE_WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def expand_help(action: argparse.Action, prog: str) -> str:
    """The help text as `--help` prints it: `%(default)s` and the like filled in, `%%` as `%`."""
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS} | {"prog": prog}
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    return action.help % params


def invocation(action: argparse.Action) -> str:
    """`-m, --multirun`, `--port PORT`, `--target {kserve,container}`, `recipe`, `overrides ...`."""
    formatter = argparse.HelpFormatter("mlops")
    if not action.option_strings:
        return formatter._format_args(action, action.dest)
    flags = ", ".join(action.option_strings)
    if action.nargs == 0:
        return flags
    return f"{flags} {formatter._format_args(action, action.dest.upper())}"


def argument_rows(parser: argparse.ArgumentParser) -> list[list[str]]:
    groups = {id(a): g for g in parser._mutually_exclusive_groups for a in g._group_actions}
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.help == argparse.SUPPRESS:
            continue
        group = groups.get(id(action))
        if group is not None:
            names = ", ".join(code(a.option_strings[-1]) for a in group._group_actions)
            default = ("required: " if group.required else "") + f"one of {names}"
        elif (action.nargs not in ("?", "*", argparse.REMAINDER) if not action.option_strings else action.required):
            default = "required"  # argparse marks a `*` positional required too, though it may be empty
        elif action.default in (None, False, [], "", argparse.SUPPRESS) or action.nargs == 0:
            default = " "
        else:
            default = code(str(action.default))
        help_text = expand_help(action, parser.prog)
        if action.choices is not None and not action.option_strings:
            help_text += f" (one of {', '.join(str(c) for c in action.choices)})"
        rows.append([code(invocation(action)), default, md_text(help_text)])
    return rows


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order `--help` lists them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            found += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return found


def anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).replace(" ", "-")


def command_pages(parser: argparse.ArgumentParser, summary: str) -> Iterator[list[str]]:
    lines = [f"## {parser.prog}", ""]
    if summary:
        lines += [md_text(summary[0].upper() + summary[1:]) + ".", ""]
    lines += ["```text", usage(parser), "```", ""]
    if parser.description:
        lines += ["```text", parser.description.strip("\n"), "```", ""]
    rows = argument_rows(parser)
    if rows:
        lines += table(["argument", "default", "what it does"], rows) + [""]
    subs = subcommands(parser)
    if subs:
        lines += table(["command", "what it does"],
                       [[f"[{code(sub.prog)}](#{anchor(sub.prog)})", md_text(text)] for _, text, sub in subs])
        lines += [""]
    if parser.epilog:
        lines += ["```text", parser.epilog.strip("\n"), "```", ""]
    yield lines
    for _, text, sub in subs:
        yield from command_pages(sub, text)


def cli_reference() -> str:
    from mlops.cli import build_parser

    parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "<!-- generated by docs/generate.py from mlops.cli.build_parser(): do not edit; run `make docs` -->",
        "",
        "Every `mlops` command with its arguments, generated from the argument parser. "
        "`mlops COMMAND --help` prints the same. Commands that take a recipe also take Hydra overrides after it "
        "(`key=value`, `group=option`, `+new.key=value`). A user error (a bad recipe, a bad argument) prints "
        "`error: ...` without a traceback and exits 2.",
        "",
    ]
    for page in command_pages(parser, ""):
        lines += page
    return "\n".join(lines).rstrip("\n") + "\n"


# --- Recipe blocks ---------------------------------------------------------------------------------------------

def fill_blocks(text: str, where: Path) -> str:
    """Each `<!-- recipe:PATH -->` ... `<!-- /recipe -->` block holds the file at PATH, verbatim, in a yaml fence."""
    def fill(match: re.Match[str]) -> str:
        source = ROOT / match["path"]
        if not source.is_file():
            raise SystemExit(f"{where.relative_to(ROOT)}: recipe block names {match['path']}, which does not exist")
        body = source.read_text()
        if body and not body.endswith("\n"):
            body += "\n"
        return f"{match['open']}```yaml\n{body}```\n{match['close']}"

    return BLOCK.sub(fill, text)


def pages_with_blocks() -> list[Path]:
    return [ROOT / "README.md"] + sorted(p for p in DOCS.rglob("*.md") if p not in (RECIPE_PAGE, CLI_PAGE))


# --- Main ------------------------------------------------------------------------------------------------------

def expected() -> dict[Path, str]:
    """Every generated file and what it should hold now."""
    sys.path.insert(0, str(ROOT))
    pages = {RECIPE_PAGE: recipe_reference(), CLI_PAGE: cli_reference()}
    for path in pages_with_blocks():
        if path.is_file():
            text = path.read_text()
            pages[path] = fill_blocks(text, path)
    return pages


def out_of_date(pages: dict[Path, str]) -> list[Path]:
    return sorted(p for p, text in pages.items() if not p.is_file() or p.read_text() != text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the reference pages and fill the docs' recipe blocks.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and name each file that is out of date")
    args = parser.parse_args(argv)
    pages = expected()
    stale = out_of_date(pages)
    if args.check:
        if stale:
            names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
            print(f"out of date: {names}; run `{FIX}`", file=sys.stderr)
            return 1
        print("docs are up to date")
        return 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pages[path])
        print(f"wrote {path.relative_to(ROOT)}")
    if not stale:
        print("docs are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
