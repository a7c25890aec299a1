"""manifest.json: what an export folder holds, how it was checked, and what made it. The Sampler, the bench, the
server and `gandeploy verify` read an export through `load_export`, which validates the schema and every
artifact's checksum. json + the standard library only."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import ArtifactError, BrokenArtifact
from .files import sha256
from .onnx_scan import WireError, external_tensors

FP32_FILE, FP16_FILE = "generator.onnx", "generator.fp16.onnx"
GENERATOR_DIR = "generator"  # the PyTorch generator (config.json + model.safetensors) inside an export
REFERENCE_FILE = "reference.npz"  # PyTorch FP32 outputs for fixed latents: what `gandeploy verify` checks against

SCHEMA_VERSION = 1
REQUIRED = ("schema_version", "name", "generator", "inputs", "output", "batch", "opset", "artifacts", "parity",
            "versions", "source")


def describe(path: Path, **extra) -> dict:
    """An artifact entry: size and checksum, plus what the caller knows of it."""
    return {"size": path.stat().st_size, "sha256": sha256(path), **extra}


def dumps(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, allow_nan=False) + "\n"


def load_manifest(folder: str | Path) -> dict:
    """Read and validate manifest.json of an export folder (schema only; see `load_export` for the files)."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.is_file():
        raise ArtifactError(f"{folder} is not an export folder (no manifest.json); make one with `gandeploy export`")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON ({e}); re-run gandeploy export") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema_version {version!r}; this gandeploy reads {SCHEMA_VERSION}: "
                            f"upgrade gandeploy, or re-export with this one")
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}; re-run gandeploy export")
    from .validate import check_manifest

    return check_manifest(manifest, str(path))


def load_export(folder: str | Path) -> dict:
    """`load_manifest` plus a check that every listed file is there, whole, unchanged, a plain file inside the
    folder (no link), and, for ONNX files, holding all its weights (no external data: no checksum covers it)."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    root = folder.resolve()
    for name, entry in {**manifest["artifacts"], **{e["file"]: e for e in manifest.get("engines", [])}}.items():
        file = folder / name
        if file.is_symlink() or (file.exists() and not file.resolve().is_relative_to(root)):
            raise BrokenArtifact(f"{file} is a link (or under one) to {file.resolve()}; an export holds its own "
                                 f"files: re-run gandeploy export")
        if not file.is_file():
            raise BrokenArtifact(f"{file} is missing; re-run gandeploy export")
        data = file.read_bytes() if name.endswith(".onnx") else None  # read once: checksum and scan
        digest = hashlib.sha256(data).hexdigest() if data is not None else sha256(file)
        if file.stat().st_size != entry["size"] or digest != entry["sha256"]:
            raise BrokenArtifact(f"{file} is truncated or changed since export ({file.stat().st_size} bytes, "
                                f"manifest says {entry['size']}; checksum differs); re-run gandeploy export")
        if data is not None:
            _check_onnx_file(file, data)
    return manifest


def _check_onnx_file(file: Path, data: bytes) -> None:
    try:
        external = external_tensors(data)
    except WireError as e:
        raise BrokenArtifact(f"{file} is not an ONNX model ({e}); re-run gandeploy export") from None
    if external:
        raise BrokenArtifact(f"{file} keeps {external} tensor(s) in external data files, which no checksum of the "
                             f"manifest covers; gandeploy exports keep weights inside the file: re-run gandeploy "
                             f"export")
