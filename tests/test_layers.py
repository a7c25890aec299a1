"""The direction of imports (docs/layers.md): formats <- runtime <- serve, and nothing on that side imports torch,
the training code or the exporter. Read from the source, so a new import that breaks the rule fails here even
where torch happens to be installed (tests/runtime/test_without_torch.py runs the same code with torch blocked)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gandeploy"
SERVING = ("formats", "runtime", "serve")
BELOW = {"torch", "torchvision", "gandeploy.train", "gandeploy.nets", "gandeploy.losses", "gandeploy.data",
         "gandeploy.recipe", "gandeploy.artifacts", "gandeploy.export", "gandeploy.metrics", "gandeploy.bench",
         "gandeploy.distributed", "gandeploy.cli"}
# the torch backend is the one module of the runtime that runs PyTorch; it is imported only when asked for
ALLOWED = {"runtime/backends/torch.py": {"torch", "gandeploy.artifacts"}}


def imports(path: Path) -> set[str]:
    """Absolute names of every module `path` imports, at any depth (lazy imports count too)."""
    return imports_of(path, "gandeploy." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))


def imports_of(path: Path, module: str) -> set[str]:
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names.add(source)
            names.update(f"{source}.{a.name}" for a in node.names)  # `from .. import train` imports gandeploy.train
    return names


def breaks(name: str, allowed: set[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in BELOW - allowed)


@pytest.mark.parametrize("path", sorted(p for layer in SERVING for p in (PACKAGE / layer).rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_serving_side_imports_nothing_below_the_line(path):
    allowed = ALLOWED.get(str(path.relative_to(PACKAGE)), set())
    bad = sorted(name for name in imports(path) if breaks(name, allowed))
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}: the serving side must not need them"


def test_the_checker_sees_relative_and_lazy_imports(tmp_path):
    # the rule is only as good as the parser: the torch backend's lazy `from ...artifacts import` must be seen
    probe = PACKAGE / "runtime" / "sampler.py"
    assert "gandeploy.runtime.batching" in imports(probe) and "gandeploy.formats.latents" in imports(probe)
    torch_backend = imports(PACKAGE / "runtime" / "backends" / "torch.py")
    assert {"torch", "gandeploy.artifacts"} <= torch_backend and breaks("gandeploy.artifacts", set())
    assert breaks("gandeploy.export.onnx", set()) and breaks("torch.nn", set())
    assert not breaks("gandeploy.formats.manifest", set())
    probe = tmp_path / "probe.py"  # `from .. import train` names the module in its alias list, not its source
    probe.write_text("from .. import train\nfrom gandeploy import export\n")
    assert {"gandeploy.train", "gandeploy.export"} <= imports_of(probe, "gandeploy.runtime.probe")
