"""No private name imported across packages: a name with a leading underscore is its module's own business, so
`from X import _y` is refused when X lies in another package. A package here is a top-level part of gandeploy
(gandeploy.runtime, gandeploy.export, gandeploy.train, ...) or bench/; within one, modules may share private
helpers. `__future__` and dunder names (`__version__`) are fine. Read from the source with `ast`, lazy imports
inside functions included, so a new private import fails here before anyone depends on it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted([*(ROOT / "gandeploy").rglob("*.py"), *(ROOT / "bench").glob("*.py")])


def module_name(path: Path) -> str:
    """'gandeploy/runtime/backends/tensorrt/engine.py' -> 'gandeploy.runtime.backends.tensorrt.engine';
    a package's __init__.py is the package itself."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str | None:
    """The package a module belongs to for this rule: 'gandeploy.<first part>', 'gandeploy' itself, or 'bench';
    None for everything else (the standard library, third-party packages)."""
    parts = module.split(".")
    if parts[0] == "gandeploy":
        return ".".join(parts[:2])
    if parts[0] == "bench":
        return "bench"
    return None


def private_imports(path: Path, module: str) -> list[tuple[int, str, str]]:
    """(line, source module, name) for every `from X import _name` in `path` (read as `module`) whose X lies in
    another package than `module`."""
    is_package = path.name == "__init__.py"
    here = package_of(module)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
            continue
        if node.level:  # relative: resolved against the importing module's package
            base = module.split(".")
            base = base[:len(base) - node.level + (1 if is_package else 0)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if module.startswith("bench.") and package_of(source) is None and (ROOT / "bench" / f"{source}.py").is_file():
            source = f"bench.{source}"  # bench's scripts import each other by bare name
        theirs = package_of(source)
        if theirs is None or theirs == here:
            continue
        for alias in node.names:
            name = alias.name
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                found.append((node.lineno, source, name))
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_name_is_imported_from_another_package(path):
    module = module_name(path)
    bad = [f"line {line}: from {source} import {name}" for line, source, name in private_imports(path, module)]
    assert not bad, (f"{path.relative_to(ROOT)} imports private names from other packages: {'; '.join(bad)} "
                     f"(give them a public name where they live)")


def test_the_checker_sees_relative_lazy_and_cross_package_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from __future__ import annotations\n"
                     "from . import _sibling\n"  # same package: fine
                     "from .engine import _helper, __version__\n"  # same package, and a dunder: fine
                     "from ....export.tensorrt import _build\n"  # export from runtime: refused
                     "def lazy():\n"
                     "    from gandeploy.formats.engines import _slug\n"  # refused, even inside a function
                     "    from gandeploy.runtime.sampler import _private\n"  # same top-level package: fine
                     "    from numpy._core import _internal\n")  # not ours: not this rule's business
    found = private_imports(probe, "gandeploy.runtime.backends.tensorrt.probe")
    assert found == [(4, "gandeploy.export.tensorrt", "_build"), (6, "gandeploy.formats.engines", "_slug")]
    init = tmp_path / "__init__.py"  # in a package's __init__, `.` is the package itself
    init.write_text("from .cuda import _check\nfrom ... import _registry\nfrom .... import _x\n")
    assert private_imports(init, "gandeploy.runtime.backends.tensorrt") == [(3, "gandeploy", "_x")]
    top = tmp_path / "cli.py"
    top.write_text("from .train import _differences\nfrom .runtime import _x\n")
    assert private_imports(top, "gandeploy.cli") == [(1, "gandeploy.train", "_differences"),
                                                     (2, "gandeploy.runtime", "_x")]
    script = tmp_path / "quality.py"
    script.write_text("from gandeploy.train import _differences\n")
    assert private_imports(script, "bench.quality") == [(1, "gandeploy.train", "_differences")]
