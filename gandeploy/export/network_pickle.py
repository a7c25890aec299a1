"""NVIDIA's network pickles (stylegan2-ada-pytorch, stylegan3) read without running anything from them.

Such a pickle is a dict (`G`, `D`, `G_ema`, `training_set_kwargs`, ...) whose networks are "persistent" objects:
each carries its class's Python source and is rebuilt by `torch_utils.persistence._reconstruct_persistent_obj`,
which compiles and runs that source. A shared network file is therefore arbitrary code. Here the unpickler knows
a short list of globals by name, each replaced by a function of ours that only builds data (tensors, numpy arrays,
dicts); the persistence call is replaced by `Captured`, which keeps the class name, the init arguments and the
module state (parameters, buffers, submodules) and never compiles `module_src`. Any other global is refused in
one line that names it, before anything else is read.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError, first_line

NETWORKS = ("G_ema", "G", "D")


@dataclass
class Captured:
    """What a persistent object would have been built from: its class name and init arguments, and its state."""

    class_name: str
    persistence_version: int
    source_sha256: str
    init_args: list = field(default_factory=list)
    init_kwargs: dict = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    buffers: dict = field(default_factory=dict)
    modules: dict = field(default_factory=dict)
    source: str = field(default="", repr=False)  # read as text, never compiled

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The flat state_dict the module would have had (parameters and buffers of every submodule)."""
        state = {prefix + k: v for k, v in {**self.parameters, **self.buffers}.items() if v is not None}
        for name, child in self.modules.items():
            if isinstance(child, Captured):
                state.update(child.state_dict(f"{prefix}{name}."))
        return state

    def classes(self, prefix: str = "") -> dict[str, str]:
        """Submodule path -> class name, for the manifest and for recognising the family."""
        names = {prefix.rstrip(".") or "": self.class_name}
        for name, child in self.modules.items():
            if isinstance(child, Captured):
                names.update(child.classes(f"{prefix}{name}."))
        return names


def _capture(meta) -> Captured:
    """Stands in for torch_utils.persistence._reconstruct_persistent_obj: keeps the description, runs nothing."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("a persistent object without the class metadata stylegan2-ada-pytorch and "
                                     "stylegan3 write")
    source = meta.get("module_src") if isinstance(meta.get("module_src"), str) else ""
    state = meta.get("state") if isinstance(meta.get("state"), dict) else {}
    args, kwargs = state.get("_init_args", ()), state.get("_init_kwargs", {})
    return Captured(class_name=meta["class_name"], persistence_version=int(meta.get("version") or 0),
                    source_sha256=hashlib.sha256(source.encode()).hexdigest(),
                    init_args=list(args) if isinstance(args, (list, tuple)) else [],
                    init_kwargs=_plain(kwargs) if isinstance(kwargs, dict) else {},
                    parameters=_tensors(state.get("_parameters")), buffers=_tensors(state.get("_buffers")),
                    modules=dict(state.get("_modules") or {}), source=source)


def _tensors(entries) -> dict:
    return {k: v for k, v in (entries or {}).items() if isinstance(v, torch.Tensor)}


def _plain(value):
    """EasyDicts and OrderedDicts as plain dicts, tuples as lists, numpy scalars as numbers: JSON-able kwargs."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class _EasyDict(dict):
    """dnnlib.EasyDict read as a dict (a subclass so that pickle's BUILD step has a __dict__ to fill)."""


def _storage(data: bytes):
    """torch.storage._load_from_bytes: a storage saved by torch.save, read back with weights_only=True."""
    if not isinstance(data, bytes):
        raise pickle.UnpicklingError("a tensor storage that is not bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation: the storage becomes a tensor at once
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _tensor(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 without hooks (a data file has no business attaching any)."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError("a tensor whose storage is not a storage")
    return torch.empty(0, dtype=storage.dtype).set_(storage._untyped_storage, offset, tuple(size), tuple(stride))


def _parameter(data, requires_grad=False, hooks=None, state=None):
    """torch._utils._rebuild_parameter(_with_state): the tensor itself (we load it into our own module)."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("a parameter that is not a tensor")
    return data


def _latin1(text, encoding="latin1"):
    """_codecs.encode as protocol 2 uses it for bytes: latin-1 text to bytes, nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


def _ndarray(cls, shape, dtype):
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("a numpy array of a type other than ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar that is not plain numbers")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _frombuffer(buffer, dtype, shape, order):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("a numpy array that is not plain numbers")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()


def _dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec, align, copy)
    if dtype.hasobject:
        raise pickle.UnpicklingError("a numpy dtype of Python objects")
    return dtype


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1,
    ("torch._utils", "_rebuild_tensor_v2"): _tensor,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "_load_from_bytes"): _storage,
    ("dnnlib.util", "EasyDict"): _EasyDict, ("dnnlib", "EasyDict"): _EasyDict,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _capture,
    # SG3 layers keep numpy arrays and scalars as attributes (sizes, sampling rates, gains): data only
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _dtype,
    **{(module, name): fn for module in ("numpy.core.multiarray", "numpy._core.multiarray")
       for name, fn in (("_reconstruct", _ndarray), ("scalar", _scalar))},
    ("numpy.core.numeric", "_frombuffer"): _frombuffer, ("numpy._core.numeric", "_frombuffer"): _frombuffer,
}


class RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return ALLOWED[module, name]
        raise RefusedGlobal(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("a persistent id, which network pickles do not use")


def read_network_pickle(path: str | Path) -> dict:
    """The pickle's top-level dict with every network as a `Captured`; refuses anything else in one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            data = _Unpickler(f).load()
    except RefusedGlobal as e:
        raise UserError(_refusal(path, e)) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, RuntimeError,
            IndexError, KeyError, OverflowError, MemoryError) as e:
        first = first_line(e)
        raise UserError(f"{path} is not a readable network pickle ({type(e).__name__}: {first}); nothing in it "
                        f"was run") from None
    if not isinstance(data, dict) or not any(isinstance(data.get(k), Captured) for k in NETWORKS):
        what = f"a dict with keys {', '.join(map(str, list(data)[:6]))}" if isinstance(data, dict) else \
            type(data).__name__
        raise UserError(f"{path} holds {what}, not a stylegan2-ada-pytorch/stylegan3 network pickle "
                        f"(a dict with G, D and G_ema)")
    return data


def _refusal(path: Path, e: RefusedGlobal) -> str:
    if e.module.startswith("dnnlib.tflib") or e.module.startswith("tensorflow"):
        return (f"{path} is a TensorFlow-era StyleGAN/StyleGAN2 pickle ({e.module}.{e.name}); gandeploy reads the "
                f"PyTorch pickles of stylegan2-ada-pytorch and stylegan3. Convert it with NVIDIA's legacy.py "
                f"(stylegan2-ada-pytorch) first; nothing in it was run")
    return (f"{path}: refused to load: the pickle asks for {e.module}.{e.name}, which a network pickle never needs "
            f"(allowed: tensor and storage rebuilds, numpy arrays, OrderedDict, dnnlib.EasyDict and "
            f"torch_utils.persistence); nothing in it was run")


def network(data: dict, path: Path, name: str = "G_ema") -> Captured:
    """One network of the pickle by key (G_ema by default)."""
    found = [k for k in data if isinstance(data.get(k), Captured)]
    if name not in data or not isinstance(data[name], Captured):
        raise UserError(f"{path} has no network {name!r}; it holds {', '.join(map(str, found))}: pick one with "
                        f"--network")
    return data[name]
