"""Measures of the package's shape, run by tests/test_layout.py and by hand:

    python tools/code_shape.py            # import cycles, functions over 40 lines, the longest

Import cycles count every import of a lokal module, also those inside functions (a cycle
through a function-level import still ties the two modules together)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 40


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the lokal package."""
    found = {}
    for file in sorted((src / "lokal").rglob("*.py")):
        parts = file.relative_to(src).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def imports(name: str, file: Path, known: set[str]) -> set[str]:
    """The lokal modules `name` imports (`from lokal.a import b` counts lokal.a.b when that is a module)."""
    found = set()
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {m for m in found if m in known and m != name}


def import_cycles(src: Path = SRC) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    files = modules(src)
    graph = {name: imports(name, file, set(files)) for name, file in files.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
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
                cycles.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return sorted(cycles)


def function_lengths(src: Path = SRC) -> list[tuple[int, str]]:
    """(lines, "module:function") for every function and method, longest first (docstrings count)."""
    lengths = []
    for name, file in modules(src).items():
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lengths.append((node.end_lineno - node.lineno + 1, f"{name}:{node.name}"))
    return sorted(lengths, reverse=True)


if __name__ == "__main__":
    cycles = import_cycles()
    print(f"import cycles: {len(cycles)}")
    for cycle in cycles:
        print("  " + " <-> ".join(cycle))
    lengths = function_lengths()
    long = [(n, f) for n, f in lengths if n >= MAX_LINES]
    longest_lines, longest = lengths[0]
    print(f"functions: {len(lengths)}, longest {longest_lines} lines ({longest}); {MAX_LINES}+ lines: {len(long)}")
    for n, f in long:
        print(f"  {n:3d} {f}")
    sys.exit(1 if cycles or long else 0)
