"""A module's syntax tree for its code version when CPython 3.11's AST constructor fails a parse because another
thread built an AST at the same moment (python/cpython#106905: "AST constructor recursion depth mismatch", seen once
in CI in `mlops run`): parsed again. That race cannot be timed in a test, so `ast.parse` fails on purpose here."""

from __future__ import annotations

import ast
from collections.abc import Callable

import pytest

from mlops.engine import codeversion
from mlops.engine.codeversion import syntax_tree

SOURCE = b"import json\nfrom os import path\n"
real_parse = ast.parse


def failing(times: int, message: str) -> tuple[Callable[[bytes], ast.Module], list[int]]:
    calls = [0]

    def parse(data: bytes) -> ast.Module:
        calls[0] += 1
        if calls[0] <= times:
            raise SystemError(message)
        return real_parse(data)

    return parse, calls


def test_a_parse_failed_by_the_race_is_parsed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    parse, calls = failing(2, "AST constructor recursion depth mismatch (before=72, after=76)")
    monkeypatch.setattr(codeversion.ast, "parse", parse)
    tree = syntax_tree(SOURCE)
    assert calls[0] == 3 and ast.dump(tree) == ast.dump(real_parse(SOURCE))


def test_the_race_every_time_or_another_system_error_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    parse, calls = failing(3, "AST constructor recursion depth mismatch (before=1, after=2)")
    monkeypatch.setattr(codeversion.ast, "parse", parse)
    with pytest.raises(SystemError, match="recursion depth mismatch"):
        syntax_tree(SOURCE)
    assert calls[0] == 3
    parse, calls = failing(1, "something else")
    monkeypatch.setattr(codeversion.ast, "parse", parse)
    with pytest.raises(SystemError, match="something else"):
        syntax_tree(SOURCE)
    assert calls[0] == 1


def test_a_syntax_error_is_not_retried() -> None:
    with pytest.raises(SyntaxError):
        syntax_tree(b"def (:\n")
