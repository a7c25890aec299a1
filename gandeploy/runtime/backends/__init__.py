"""Backends: one small interface over PyTorch, ONNX Runtime and TensorRT, registered by name.

The lifecycle follows Polygraphy's runners: a loader (`load` in each backend's module) turns a `Source` (export or
generator folder), a device and a precision into a backend; `run(z, labels, kind)` computes one batch; `close()`
frees it. `run` takes float32 z (b, latent_dim) and int64 labels (b,) or None, b <= the Sampler's batch limit, and
returns uint8 (b, h, w, c) for kind="uint8" or float32 (b, c, h, w) for kind="float"; a backend lists the kinds it
produces. Each backend's module imports its library at the top and is itself imported only when the backend is
asked for, so a library that is missing becomes a `BackendUnavailable` with the reason and the install line.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ...errors import UserError


class BackendUnavailable(UserError):
    """The backend cannot run here (not installed, no GPU, engine for another GPU); the message says why."""


class Backend(Protocol):
    name: str
    kinds: tuple[str, ...]  # "uint8" and/or "float"
    provider: str  # what computes, in words (an ONNX Runtime provider, a torch device, a GPU)

    def run(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Source:
    """What a backend loads from: an export folder (manifest checked), or a bare generator folder (torch only)."""

    path: Path
    manifest: dict | None
    config: dict  # the generator spec: latent_dim, resolution, channels, num_classes, value_range, ...

    @property
    def output_kind(self) -> str:
        return self.manifest["output"]["kind"] if self.manifest else "float"


@dataclass(frozen=True)
class Entry:
    name: str
    module: str  # imported when the backend is first asked for
    devices: tuple[str, ...]  # device kinds it can run on
    options: tuple[str, ...]  # keyword options its loader takes
    install: str  # what to install when its library is missing


REGISTRY = {e.name: e for e in (
    Entry("torch", f"{__name__}.torch", ("cpu", "cuda"), ("compile", "micro_batch"),
          "pip install 'gandeploy[train]' (with your CUDA build of torch on a GPU)"),
    Entry("onnxruntime", f"{__name__}.onnxruntime", ("cpu", "cuda"), ("threads",),
          "pip install 'gandeploy[serve]' (CPU) or 'gandeploy[gpu]' (CUDA)"),
    Entry("tensorrt", f"{__name__}.tensorrt", ("cuda",), ("streams",), "pip install 'gandeploy[gpu]'"),
)}

# What `auto` tries, in order: the fastest that can run here wins.
AUTO = (("tensorrt", "cuda"), ("onnxruntime", "cuda"), ("onnxruntime", "cpu"), ("torch", "cuda"), ("torch", "cpu"))
OPTIONS = tuple(sorted({o for e in REGISTRY.values() for o in e.options}))


def load(name: str, source: Source, device: str, precision: str, options: dict | None = None) -> Backend:
    """Make backend `name` for `source` on `device` (resolved), or raise BackendUnavailable saying why not."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise UserError(f"backend {name!r} is not one of auto, {', '.join(REGISTRY)}")
    kind = device.split(":")[0]
    if kind not in entry.devices:
        raise BackendUnavailable(f"{name} runs on {' or '.join(entry.devices)}, not on {device}")
    try:
        module = importlib.import_module(entry.module)
    except ImportError as e:
        raise BackendUnavailable(f"{name} is not installed here ({e}); {entry.install}") from None
    except OSError as e:  # a library that is there but cannot load (a CUDA library missing, say)
        raise BackendUnavailable(f"{name} is installed but does not load ({e}); {entry.install}") from None
    own = {k: v for k, v in (options or {}).items() if k in entry.options and v is not None}
    try:
        return module.load(source, device, precision, **own)
    except UserError:
        raise
    except (OSError, RuntimeError) as e:  # the library failed to start (device memory, a driver error)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BackendUnavailable(f"{name} could not start on {device}: {type(e).__name__}: {first}") from None
