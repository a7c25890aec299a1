"""Devices, resolved in one place: `auto`, `cpu`, `cuda` or `cuda:N`.

Whether a CUDA GPU is visible is asked of the CUDA driver itself (libcuda through ctypes: cuInit and
cuDeviceGetCount honour CUDA_VISIBLE_DEVICES), so the answer needs neither torch nor any CUDA Python package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re

from ..errors import UserError

_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices the driver shows this process; 0 without a driver or GPU."""
    for name in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda"), "nvcuda.dll"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def resolve_device(name: str, what: str = "device") -> str:
    """'auto' -> 'cuda' where the driver shows a GPU, else 'cpu'; 'cuda[:N]' checked against what is visible."""
    match = _DEVICE.match(str(name).strip())
    if match is None or (match[1] != "cuda" and match[2] is not None):
        raise UserError(f"{what} {name!r}: expected auto, cpu or cuda[:N]")
    kind, index = match[1], int(match[2] or 0)
    if kind == "auto":
        return "cuda" if cuda_device_count() else "cpu"
    if kind == "cuda":
        count = cuda_device_count()
        if index >= count:
            seen = "no CUDA GPU is visible" if count == 0 else f"only {count} CUDA GPU(s) are visible"
            raise UserError(f"{what} {name!r}: {seen}; use cpu")
    return str(name).strip()


def device_index(device: str) -> int:
    """'cuda:2' -> 2, 'cuda' -> 0."""
    return int(device.split(":")[1]) if ":" in device else 0
