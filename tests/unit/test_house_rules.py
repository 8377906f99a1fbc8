"""The house rules of issue 11, checked on the tree: small rooms and one-way imports.

- No file in flows/, tasks/, emulator/, local/ over 500 lines; no function there over 80 lines.
- Only tests/, local/ and scripts/ import emulator/; tasks/ never imports flows/.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("flows", "tasks", "emulator", "local")
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def _sources(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def test_no_file_is_over_the_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _sources(*PACKAGES)
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert long == {}, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_over_the_limit() -> None:
    long = {}
    for path in _sources(*PACKAGES):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                length = (node.end_lineno or node.lineno) - first + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = length
    assert long == {}, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("flows", "emulator"), ("tasks", "emulator"), ("tasks", "flows"), ("emulator", "flows")],
)
def test_imports_flow_one_way(package: str, forbidden: str) -> None:
    offenders = sorted(
        f"{path.relative_to(ROOT)} imports {module}"
        for path in _sources(package)
        for module in _imports(path)
        if _top(module) == forbidden
    )
    assert offenders == []


def test_the_rules_see_the_tree() -> None:
    # Guards the checks above against passing on an empty walk.
    assert sum(1 for _ in _sources(*PACKAGES)) > 40
    assert any(_top(m) == "tasks" for m in _imports(ROOT / "flows" / "deploy.py"))
