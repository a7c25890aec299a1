"""The shape of the serving side, read from the source: no import cycle inside gandeploy/serve/ (imports inside
functions count: they hide a cycle, they do not remove it), and no function longer than a screen in serve/ or
runtime/ (docs/style.md: a function longer than a screen is a place to split)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "gandeploy"
MAX_FUNCTION_LINES = 60


def serve_graph(folder: Path, package: str) -> dict[str, set[str]]:
    """{module: modules of the same folder it imports, at any depth}, by file stem (the package's own: __init__)."""
    modules = {p.stem for p in folder.glob("*.py")}

    def targets(source: str, names: list[str]) -> set[str]:
        if source == package:  # `from . import x`: the submodule x, or a name of the package's __init__
            return {n if n in modules else "__init__" for n in names} or {"__init__"}
        head = source.removeprefix(package + ".").split(".")[0]
        return {head} if source.startswith(package + ".") and head in modules else set()

    graph = {}
    for path in folder.glob("*.py"):
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(*(targets(a.name, []) for a in node.names))
            elif isinstance(node, ast.ImportFrom) and node.level <= 1:  # level 2 and up: outside the folder
                source = node.module if not node.level else package + (f".{node.module}" if node.module else "")
                edges |= targets(source, [] if node.module and node.level else [a.name for a in node.names])
        edges.discard(path.stem)
        graph[path.stem] = edges
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as [a, b, ..., a], or None."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def long_functions(folder: Path, limit: int) -> list[str]:
    """'file:function (lines)' of every function (methods and nested ones included) longer than `limit`."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.name} ({lines} lines)")
    return found


def test_serve_has_no_import_cycle():
    graph = serve_graph(PACKAGE / "serve", "gandeploy.serve")
    assert {"app", "http", "oip", "service", "v1"} <= set(graph)
    found = cycle(graph)
    assert found is None, f"gandeploy/serve/ imports in a cycle: {' -> '.join(found)}"


def test_the_cycle_check_sees_imports_inside_functions(tmp_path):
    (tmp_path / "__init__.py").write_text("from .a import f\n")
    (tmp_path / "a.py").write_text("from . import b\n\ndef f():\n    return b.g()\n")
    (tmp_path / "b.py").write_text("def g():\n    from .a import f\n    return f\n")
    (tmp_path / "c.py").write_text("from pkg import a\n")
    graph = serve_graph(tmp_path, "pkg")
    assert graph == {"__init__": {"a"}, "a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycle(graph) in (["a", "b", "a"], ["b", "a", "b"])
    (tmp_path / "b.py").write_text("def g():\n    return 1\n")
    assert cycle(serve_graph(tmp_path, "pkg")) is None
    (tmp_path / "b.py").write_text("from . import f\n")  # the package's __init__, which imports a, which imports b
    assert cycle(serve_graph(tmp_path, "pkg")) is not None


def test_no_function_in_serve_or_runtime_is_longer_than_a_screen():
    found = [f for layer in ("serve", "runtime") for f in long_functions(PACKAGE / layer, MAX_FUNCTION_LINES)]
    assert not found, f"functions over {MAX_FUNCTION_LINES} lines (split them): {', '.join(found)}"
