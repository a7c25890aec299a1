"""TensorRT: an export's engine plan (`gandeploy export --trt`), run without torch.

- `cuda`: buffers, streams and copies through NVIDIA's CUDA Python bindings (cuda-python).
- `engine`: whether TensorRT runs here, the process's logger and runtime, loading an engine file (EngineMismatch for
  one built for another TensorRT or GPU), checking it against the manifest, execution-context calls.
- `backend`: the registry's `load` and `TensorRTBackend`, one execution context per concurrent caller.

Engine file names live in gandeploy.formats.engines; building engines and running one batch to check it live in
gandeploy.export.tensorrt (build time, not a serving path), which uses the names below. `tensorrt` and cuda-python
are imported inside functions only, so this package imports without them.
"""

from .backend import TensorRTBackend, load
from .cuda import CudaError, alloc_pinned, check_cuda, cuda_runtime, free_all
from .engine import (
    INSTALL,
    MIN_TENSORRT,
    REBUILD_HINT,
    EngineMismatch,
    TensorRTUnavailable,
    availability,
    check_signature,
    current_device,
    execute,
    execution_context,
    gpu_info,
    io_tensors,
    load_engine,
    one_line,
    require,
    logged_errors,
    set_address,
    set_shape,
    trt_logger,
    trt_runtime,
    version_tuple,
)

__all__ = [
    "INSTALL",
    "MIN_TENSORRT",
    "REBUILD_HINT",
    "CudaError",
    "EngineMismatch",
    "TensorRTBackend",
    "TensorRTUnavailable",
    "alloc_pinned",
    "availability",
    "check_cuda",
    "check_signature",
    "cuda_runtime",
    "current_device",
    "execute",
    "execution_context",
    "free_all",
    "gpu_info",
    "io_tensors",
    "load",
    "load_engine",
    "one_line",
    "require",
    "logged_errors",
    "set_address",
    "set_shape",
    "trt_logger",
    "trt_runtime",
    "version_tuple",
]
