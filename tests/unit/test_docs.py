"""The docs stay true: generated pages match the schema and the parser, the README stays short, links resolve.

docs/generate.py writes docs/reference/recipe.md and docs/reference/cli.md and fills the recipe blocks of
README.md and docs/; a change to the schema, the parser or an embedded recipe needs `make docs`.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)[^`].*?\1")


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_up_to_date() -> None:
    gen = generator()
    stale = gen.out_of_date(gen.expected())
    names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
    assert not stale, f"out of date: {names}; run `make docs` and commit the result"


def test_generation_is_deterministic() -> None:
    gen = generator()
    assert gen.recipe_reference() == gen.recipe_reference()
    assert gen.cli_reference() == gen.cli_reference()


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; keep it to {README_MAX_LINES} and move the rest to docs/"


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(path: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", path.read_text()))  # links in code are examples, not links
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # no URLs


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    found: set[str] = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().replace("`", "").replace("&lt;", "<").lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            n = 0
            while (candidate := slug if n == 0 else f"{slug}-{n}") in found:
                n += 1
            found.add(candidate)
    return found


def test_relative_links_resolve() -> None:
    broken = []
    for path in markdown_files():
        for target in relative_links(path):
            file, _, fragment = target.partition("#")
            dest = path.parent / file if file else path
            if not dest.exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{path.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "links to files or headings that do not exist:\n" + "\n".join(broken)


def test_every_docs_page_is_linked_from_the_index() -> None:
    index = ROOT / "docs" / "index.md"
    linked = {(index.parent / t.split("#", 1)[0]).resolve() for t in relative_links(index)}
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md") if p != index}
    missing = sorted(str(p.relative_to(ROOT)) for p in pages - linked)
    assert not missing, f"docs/index.md does not link: {', '.join(missing)}"
