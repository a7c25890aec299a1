"""Files we write and read back: atomic writes, the generator artifact, and checkpoints without pickle.

A generator artifact is a folder: `config.json` (what to build) + `model.safetensors` (its weights).
A checkpoint is one safetensors file whose metadata holds a JSON skeleton of the training state; tensors in the
skeleton are references into the file. Nothing here unpickles or executes anything from disk.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ArtifactError, first_line
from .formats.files import MARK, atomic_dir, atomic_path, atomic_write_text, check_replaceable  # noqa: F401
from .formats.generator import GENERATOR_FORMAT, generator_dir, read_config  # noqa: F401  (re-exported)

CHECKPOINT_FORMAT = "gandeploy-checkpoint/1"


# ---- the generator artifact ----------------------------------------------------------------------------------


def save_generator(path: str | Path, generator: torch.nn.Module, config: dict) -> Path:
    """Write a generator folder. A new one appears whole (one rename); one that gandeploy wrote before is updated
    file by file, each file atomically, weights first and config.json (which records the step) last: a reader
    always finds a readable generator, and a kill in between leaves a config whose step says it is behind."""
    path = Path(path)
    config = {"format_version": GENERATOR_FORMAT, **config}
    tensors = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    text = json.dumps(config, indent=2) + "\n"
    check_replaceable(path, "generator")
    if not (path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file()):
        with atomic_dir(path, kind="generator") as tmp:
            (tmp / "config.json").write_text(text)
            _save(tensors, tmp / "model.safetensors", {"format": "gandeploy-generator"})
        return path
    with atomic_path(path / "model.safetensors") as tmp:
        _save(tensors, tmp, {"format": "gandeploy-generator"})
    atomic_write_text(path / "config.json", text)
    if not (path / MARK).is_file():  # a folder from before marks: mark it now that it is known to be ours
        atomic_write_text(path / MARK, json.dumps({"kind": "generator", "written_by": "gandeploy"}) + "\n")
    return path


def _save(tensors: dict, path: Path, metadata: dict) -> None:
    """safetensors' save_file, with a full disk raised as the OSError (ENOSPC, naming the file) it is: safetensors
    reports it as its own error type, whose only trace of the cause is the OS's text."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as e:
        if "No space left" in str(e) or "code: 28" in str(e):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from e
        raise


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Build the generator a folder describes and load its weights; eval mode, on `device`."""
    from .nets import GENERATORS, build_generator

    folder = generator_dir(path)
    cfg_file, weights = folder / "config.json", folder / "model.safetensors"
    if not folder.is_dir():
        raise ArtifactError(f"{path} does not exist; pass a run folder (runs/<name>) or its generator/ folder")
    if not cfg_file.is_file() or not weights.is_file():
        missing = "config.json" if not cfg_file.is_file() else "model.safetensors"
        raise ArtifactError(f"{folder} is not a generator folder ({missing} is missing); train one with "
                            f"`gandeploy train` and pass runs/<name>")
    config = read_config(folder)
    if config.get("family") not in GENERATORS:
        raise ArtifactError(f"{cfg_file}: unknown family {config.get('family')!r}; valid: {', '.join(GENERATORS)}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"{weights} is unreadable or truncated ({e}); copy it again or re-train") from None
    try:
        model = build_generator(config)
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        first = first_line(e)
        raise ArtifactError(f"{folder}: weights do not match config.json ({first})") from None
    return model.to(device).eval(), config


# ---- checkpoints: a tree of tensors and plain values, without pickle ----------------------------------------


def _pack(obj, tensors: dict):
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().clone().contiguous()
        return {"$tensor": key}
    if isinstance(obj, dict):
        return {"$dict": [[k, _pack(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"$tuple": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _unpack(node, tensors: dict):
    if isinstance(node, list):
        return [_unpack(v, tensors) for v in node]
    if isinstance(node, dict):
        if "$tensor" in node:
            return tensors[node["$tensor"]]
        if "$tuple" in node:
            return tuple(_unpack(v, tensors) for v in node["$tuple"])
        return {k: _unpack(v, tensors) for k, v in node["$dict"]}
    return node


def save_checkpoint(path: str | Path, state: dict) -> None:
    tensors: dict = {}
    skeleton = _pack(state, tensors)
    with atomic_path(path) as tmp:
        _save(tensors, tmp, {"format": CHECKPOINT_FORMAT, "tree": json.dumps(skeleton)})


def load_checkpoint(path: str | Path) -> dict:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise ArtifactError(f"checkpoint {path} is unreadable ({e})") from None
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ArtifactError(f"checkpoint {path} has format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    return _unpack(json.loads(meta["tree"]), tensors)
