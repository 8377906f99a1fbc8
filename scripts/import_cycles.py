"""Import cycles between the modules of a package: `python scripts/import_cycles.py emulator/gcp`.

Every `import` / `from ... import` counts, type-only ones (`if TYPE_CHECKING:`) included, and
an import names the module it imports, not its parent packages (`from pkg import mod` names
`pkg.mod`). Prints each cycle (a strongly
connected group of modules) and exits 1 when there is one.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    """The dotted name Python imports `path` by (from the directory above the top package)."""
    top = root
    while (top.parent / "__init__.py").exists():
        top = top.parent
    parts = list(path.relative_to(top.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The known modules `path` imports (a `from pkg import mod` names the module `pkg.mod`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            submodules = {f"{base}.{a.name}" for a in node.names} & known
            # `from pkg import mod` imports the module; `from mod import name` imports mod.
            found |= submodules if len(submodules) == len(node.names) else submodules | {base}
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "emulator/gcp").resolve()
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {name: imports_of(path, name, set(files)) for name, path in files.items()}
    found = cycles(graph)
    for group in found:
        print("import cycle:", " <-> ".join(group))
    print(f"{len(files)} modules, {sum(map(len, graph.values()))} imports, {len(found)} cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
