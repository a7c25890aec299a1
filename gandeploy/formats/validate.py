"""One validator per file kind we read back (generator config, manifest): the structure, the types and the ranges
of every field the code uses, so a damaged or hand-edited file is one line naming the file and the field, never a
KeyError deep inside, nor a silently wrong answer. Plain Python: each check says what it wants."""

from __future__ import annotations

import math
import re

from ..errors import ArtifactError
from .latents import distribution
from .names import check_name, check_relative
from .vocabulary import PRECISIONS

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Fields:
    """Reads fields of one JSON object for one file, raising ArtifactError('<file>: <field>: <problem>; <fix>')."""

    def __init__(self, where: str, fix: str):
        self.where, self.fix = where, fix

    def fail(self, field: str, problem: str):
        raise ArtifactError(f"{self.where}: {field}: {problem}; {self.fix}")

    def obj(self, value, field: str) -> dict:
        if not isinstance(value, dict):
            self.fail(field, f"expected an object, got {_kind(value)}")
        return value

    def get(self, tree: dict, key: str, field: str | None = None):
        if key not in tree:
            self.fail(field or key, "missing")
        return tree[key]

    def integer(self, value, field: str, lo: int | None = None, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"expected an integer, got {_kind(value)}")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.fail(field, f"{value} is out of range ({lo if lo is not None else '-inf'}.."
                             f"{hi if hi is not None else 'inf'})")
        return value

    def text(self, value, field: str, choices=None) -> str:
        if not isinstance(value, str):
            self.fail(field, f"expected a string, got {_kind(value)}")
        if choices is not None and value not in choices:
            self.fail(field, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def value_range(self, value, field: str = "value_range") -> list[float]:
        if not isinstance(value, list) or len(value) != 2 or any(isinstance(v, bool) or
                                                                 not isinstance(v, (int, float)) for v in value):
            self.fail(field, f"expected [LO, HI], got {value!r}")
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            self.fail(field, f"[{lo}, {hi}] is not a finite range with LO < HI")
        return [lo, hi]


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__


def check_generator_spec(config, where: str, fix: str = "re-save the generator") -> dict:
    """config.json of a generator folder, or a manifest's `generator`."""
    f = Fields(where, fix)
    config = f.obj(config, "the file")
    f.text(f.get(config, "family"), "family")
    f.integer(f.get(config, "latent_dim"), "latent_dim", 1, 1 << 20)
    f.integer(f.get(config, "resolution"), "resolution", 1, 1 << 15)
    f.integer(f.get(config, "channels"), "channels", 1, 4)
    f.integer(f.get(config, "num_classes"), "num_classes", 0, 1 << 24)
    config["value_range"] = f.value_range(f.get(config, "value_range"))
    for key in ("width", "embed_dim"):
        if config.get(key) is not None:
            f.integer(config[key], key, 1, 1 << 16)
    if config.get("latent_distribution") is not None:
        config["latent_distribution"] = _latent_distribution(f, config["latent_distribution"])
    if config.get("step") is not None:
        f.integer(config["step"], "step", 0)
    if config.get("run_name") is not None:
        f.text(config["run_name"], "run_name")
    return config


def _latent_distribution(f: Fields, value) -> dict:
    spec = f.obj(value, "latent_distribution")
    unknown = sorted(set(spec) - {"name", "bound", "scale"})
    if unknown:
        f.fail("latent_distribution", f"unknown field {unknown[0]!r}")
    try:
        return distribution(spec.get("name"), spec.get("bound"), spec.get("scale", 1.0))
    except (ValueError, TypeError) as e:
        f.fail("latent_distribution", str(e))


def check_manifest(manifest: dict, where: str) -> dict:
    """Every field of manifest.json the runtime, the server, verify and triton read."""
    f = Fields(where, "re-run gandeploy export")
    check_name(f.text(manifest["name"], "name"), f"{where}: name")
    check_generator_spec(manifest["generator"], f"{where}: generator", "re-run gandeploy export")
    inputs = manifest["inputs"]
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= 2:
        f.fail("inputs", f"expected a list of 1 or 2 inputs, got {_kind(inputs)}")
    for k, spec in enumerate(inputs):
        spec = f.obj(spec, f"inputs[{k}]")
        f.text(f.get(spec, "name", f"inputs[{k}].name"), f"inputs[{k}].name")
        f.text(f.get(spec, "dtype", f"inputs[{k}].dtype"), f"inputs[{k}].dtype", ("float32", "int64"))
    if (len(inputs) == 2) != bool(manifest["generator"]["num_classes"]):
        f.fail("inputs", f"{len(inputs)} input(s) for a generator with num_classes "
                         f"{manifest['generator']['num_classes']}")
    out = f.obj(manifest["output"], "output")
    f.text(f.get(out, "name", "output.name"), "output.name")
    kind = f.text(f.get(out, "kind", "output.kind"), "output.kind", ("uint8", "float"))
    f.text(f.get(out, "dtype", "output.dtype"), "output.dtype", ("uint8",) if kind == "uint8" else ("float32",))
    shape = f.get(out, "shape", "output.shape")
    if not isinstance(shape, list) or len(shape) != 4:
        f.fail("output.shape", f"expected [batch, ...3 dims], got {shape!r}")
    g = manifest["generator"]
    want = [g["resolution"], g["resolution"], g["channels"]] if kind == "uint8" else \
        [g["channels"], g["resolution"], g["resolution"]]
    if shape[1:] != want:
        f.fail("output.shape", f"{shape[1:]} contradicts the generator ({want} for {kind} output)")
    batch = f.obj(manifest["batch"], "batch")
    lo, opt, hi = (f.integer(f.get(batch, k, f"batch.{k}"), f"batch.{k}", 1) for k in ("min", "opt", "max"))
    if not lo <= opt <= hi:
        f.fail("batch", f"min {lo}, opt {opt}, max {hi} are out of order")
    artifacts = f.obj(manifest["artifacts"], "artifacts")
    for name, entry in artifacts.items():
        check_relative(name, f"{where}: artifacts: file")
        _file_entry(f, entry, f"artifacts[{name!r}]")
    engines = manifest.get("engines", [])
    if not isinstance(engines, list):
        f.fail("engines", f"expected a list, got {_kind(engines)}")
    for k, entry in enumerate(engines):
        entry = f.obj(entry, f"engines[{k}]")
        check_name(f.text(f.get(entry, "file", f"engines[{k}].file"), f"engines[{k}].file"),
                   f"{where}: engines[{k}].file")
        f.text(f.get(entry, "precision", f"engines[{k}].precision"), f"engines[{k}].precision", PRECISIONS)
        _file_entry(f, entry, f"engines[{k}]")
    _required_artifacts(f, manifest)
    refs = manifest.get("references")
    if refs is not None:
        refs = f.obj(refs, "references")
        f.text(f.get(refs, "file", "references.file"), "references.file", ("reference.npz",))
        f.integer(f.get(refs, "count", "references.count"), "references.count", 1, 1 << 16)
    return manifest


def _required_artifacts(f: Fields, manifest: dict) -> None:
    """What every export of this kind holds must be listed: a file dropped from the manifest is not checked."""
    required = ["generator.onnx"]
    if manifest.get("references") is not None:
        required.append("reference.npz")
    if isinstance(manifest["parity"], dict) and "onnxruntime_fp16" in manifest["parity"]:
        required.append("generator.fp16.onnx")
    if isinstance(manifest["source"], dict) and "generator" in manifest["source"]:  # a gandeploy run's export
        required += ["generator/config.json", "generator/model.safetensors"]
    missing = [name for name in required if name not in manifest["artifacts"]]
    if missing:
        f.fail("artifacts", f"{missing[0]} is not listed, though this export made it")


def _file_entry(f: Fields, entry, field: str) -> None:
    entry = f.obj(entry, field)
    f.integer(f.get(entry, "size", f"{field}.size"), f"{field}.size", 0)
    digest = f.text(f.get(entry, "sha256", f"{field}.sha256"), f"{field}.sha256")
    if not _SHA256.match(digest):
        f.fail(f"{field}.sha256", "not a sha256 hex digest")
