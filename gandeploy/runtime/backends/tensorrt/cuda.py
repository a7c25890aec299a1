"""CUDA through NVIDIA's CUDA Python bindings (cuda-python, `cuda.bindings.runtime`) rather than polygraphy.cuda:
they are NVIDIA's own bindings, what the TensorRT Python samples use, and keep Polygraphy out of a serving image.
cuda-python is imported inside functions only, so this module imports without it."""

from __future__ import annotations

import ctypes

import numpy as np


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message has cudaGetErrorString's text."""


def cuda_runtime():
    """cuda-python's runtime API: `cuda.bindings.runtime` (cuda-python >= 12.6), else the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def check_cuda(result, what: str):
    """A cuda-python call returns (cudaError_t, *values): the values, or CudaError with CUDA's own text."""
    cudart = cuda_runtime()
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        text = cudart.cudaGetErrorString(err)[1]
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        raise CudaError(f"CUDA {what} failed: {getattr(err, 'name', err)}: {text}")
    return values[0] if len(values) == 1 else (values or None)


def free_all(device=(), host=(), streams=()) -> str | None:
    """Free everything given, even after a failure; the first failure's message, if any."""
    cudart, first = cuda_runtime(), None
    for call, handles, what in ((cudart.cudaFree, device, "cudaFree"), (cudart.cudaFreeHost, host, "cudaFreeHost"),
                                (cudart.cudaStreamDestroy, streams, "cudaStreamDestroy")):
        for handle in handles:
            try:
                check_cuda(call(handle), what)
            except CudaError as exc:
                first = first or str(exc)
    return first


def alloc_pinned(cudart, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, np.ndarray]:
    """Page-locked host memory (cudaMallocHost) seen as a numpy array; free the pointer with cudaFreeHost."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    ptr = int(check_cuda(cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
    raw = np.ctypeslib.as_array(ctypes.cast(ctypes.c_void_p(ptr), ctypes.POINTER(ctypes.c_ubyte)), (nbytes,))
    return ptr, raw.view(dtype).reshape(shape)
