"""TensorRT engines on this machine: whether TensorRT can run here (`availability`), the process's logger and
runtime, loading an engine file (EngineMismatch when it was built for another TensorRT or GPU), checking it against
the manifest, and the execution-context calls with TensorRT's own error text. `tensorrt` is imported inside
functions only, so this module imports without it."""

from __future__ import annotations

import collections
import functools
import logging
import re
from pathlib import Path

import numpy as np

from ....errors import BrokenArtifact, UserError
from ....formats.engines import built_for
from ...device import cuda_device_count
from .. import BackendUnavailable
from .cuda import check_cuda, cuda_runtime

MIN_TENSORRT = (10, 0)
INSTALL = "pip install 'gandeploy[gpu]'"
REBUILD_HINT = "rebuild it on this machine with `gandeploy export --trt`"

_log = logging.getLogger(__package__)  # the backend's logger, as before the module became a package


class TensorRTUnavailable(BackendUnavailable):
    """tensorrt or cuda-python does not import, or no CUDA GPU is visible; the message says which and the fix."""


class EngineMismatch(BrokenArtifact):
    """An engine file that this TensorRT / GPU cannot deserialize (built elsewhere, or damaged): the export fails
    on this machine until the engine is rebuilt here."""


# ---- versions, messages, what this machine has ---------------------------------------------------------------


def version_tuple(version: str) -> tuple[int, int]:
    """'10.13.3.9' -> (10, 13)."""
    match = re.match(r"^\s*(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def one_line(parts) -> str:
    """Messages (TensorRT's, a parser's) joined into one line: whitespace runs become one space, blanks dropped."""
    return "; ".join(" ".join(str(p).split()) for p in parts if str(p).strip())


def availability() -> str | None:
    """None when tensorrt >= 10.0 and cuda-python import and CUDA shows a GPU; else the one-line reason and fix."""
    missing, fixes = [], []
    try:
        import tensorrt as trt
    except Exception as exc:  # noqa: BLE001 -- a broken install raises OSError etc., not only ImportError
        missing.append(f"the `tensorrt` module ({type(exc).__name__}: {exc})")
        fixes.append(INSTALL)
    else:
        version = str(getattr(trt, "__version__", "unknown"))
        if not re.match(r"^\d+\.\d+", version) or version_tuple(version) < MIN_TENSORRT:
            missing.append(f"TensorRT >= {MIN_TENSORRT[0]}.{MIN_TENSORRT[1]} (found {version})")
            fixes.append("pip install -U 'gandeploy[gpu]'")
    try:
        cudart = cuda_runtime()
    except Exception as exc:  # noqa: BLE001
        missing.append(f"cuda-python ({type(exc).__name__}: {exc})")
        fixes.append(INSTALL)
        gpu = "" if cuda_device_count() else "the CUDA driver shows none"
    else:
        try:
            count = check_cuda(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
            gpu = "" if count > 0 else "cudaGetDeviceCount found none"
        except Exception as exc:  # noqa: BLE001 -- no driver: CudaError; a half-installed cuda-python: others
            gpu = str(exc)
    if gpu:
        missing.append(f"a CUDA GPU ({gpu})")
        fixes.append("run on a machine with an NVIDIA GPU and its driver")
    if not missing:
        return None
    return one_line([f"TensorRT needs {' and '.join(missing)}: {'; '.join(dict.fromkeys(fixes))}"])


def require() -> None:
    """TensorRTUnavailable with `availability()`'s reason, unless TensorRT can run here."""
    reason = availability()
    if reason is not None:
        raise TensorRTUnavailable(reason)


def current_device() -> int:
    """The CUDA device this thread uses (where TensorRT builds and deserializes)."""
    require()
    return int(check_cuda(cuda_runtime().cudaGetDevice(), "cudaGetDevice"))


def gpu_info(device_index: int = 0) -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of a CUDA device, e.g. ('NVIDIA H100 80GB HBM3', (9, 0))."""
    require()
    prop = check_cuda(cuda_runtime().cudaGetDeviceProperties(int(device_index)),
                      f"cudaGetDeviceProperties({device_index})")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.split("\x00")[0].strip(), (int(prop.major), int(prop.minor))


# ---- TensorRT's logger and runtime, loading and checking engines --------------------------------------------


@functools.lru_cache(maxsize=1)
def trt_logger():
    """One logger for every builder and runtime of the process (TensorRT warns when they differ). It keeps the
    latest error messages, so failures can say what TensorRT said, and passes errors and warnings to `logging`
    at INFO (failures quote the errors in their own one-line message; build warnings are mostly noise)."""
    import tensorrt as trt

    class Recorder(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: collections.deque[str] = collections.deque(maxlen=32)
            self.count = 0  # errors ever logged: a mark taken before a call finds that call's errors

        def log(self, severity, msg):
            level = int(severity)
            if level <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(" ".join(str(msg).split()))
                self.count += 1
            if level <= int(trt.ILogger.Severity.WARNING):
                _log.info("TensorRT: %s", msg)

        def since(self, mark: int) -> list[str]:
            """The errors logged after `mark` (self.count then), the latest 32 at most."""
            n = min(self.count - mark, len(self.errors))
            return list(self.errors)[len(self.errors) - n:] if n > 0 else []

    return Recorder()


def logged_errors(mark: int, limit: int = 3) -> str:
    """What TensorRT logged as errors since `mark`, in one line."""
    return one_line(trt_logger().since(mark)[-limit:]) or "TensorRT logged no error message"


@functools.lru_cache(maxsize=1)
def trt_runtime():
    """Kept for the process: engines must not outlive the runtime that deserialized them."""
    import tensorrt as trt

    return trt.Runtime(trt_logger())


def load_engine(path):
    """Deserialize an engine file on this thread's CUDA device; EngineMismatch when this TensorRT/GPU cannot
    (built for another one, or damaged), naming both and quoting TensorRT."""
    require()
    import tensorrt as trt

    path = Path(path)
    if not path.is_file():
        raise UserError(f"TensorRT engine not found: {path}")
    mark = trt_logger().count
    try:
        engine, extra = trt_runtime().deserialize_cuda_engine(path.read_bytes()), []
    except Exception as exc:  # noqa: BLE001 -- some releases raise instead of returning None
        engine, extra = None, [str(exc)]
    if engine is None:
        gpu, (major, minor) = gpu_info(current_device())
        told = one_line([*trt_logger().since(mark)[-2:], *extra])
        raise EngineMismatch(
            f"cannot load TensorRT engine {path}: it was built for {built_for(path)} or the file is damaged, "
            f"and this machine has TensorRT {trt.__version__} on {gpu} (sm{major}{minor}); {REBUILD_HINT}"
            + (f"; TensorRT said: {told}" if told else ""))
    return engine


def _dtype_name(trt, dtype) -> str:
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # bfloat16, fp8, int4: no numpy type
        return str(dtype)


def io_tensors(trt, engine) -> tuple[list[str], list[str]]:
    """The engine's (input names, output names), in the engine's order."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return ([n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT],
            [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT])


def check_signature(engine, manifest: dict, path) -> None:
    """The engine's inputs and output (names, I/O modes, dtypes, trailing dims) must be what the manifest declares:
    a wrong or stale engine file is refused, not run."""
    import tensorrt as trt

    inputs, outputs = io_tensors(trt, engine)
    found = {n: _dtype_name(trt, engine.get_tensor_dtype(n)) for n in inputs}
    gives = {n: _dtype_name(trt, engine.get_tensor_dtype(n)) for n in outputs}
    declared = {i["name"]: i["dtype"] for i in manifest["inputs"]}
    out = manifest["output"]
    problem = None
    if found != declared or gives != {out["name"]: out["dtype"]}:
        problem = (f"takes {found} and gives {gives}, but the manifest declares {declared} -> "
                   f"{out['name']} {out['dtype']}")
    else:
        shape = tuple(engine.get_tensor_shape(out["name"]))[1:]
        if shape != tuple(out["shape"][1:]):
            problem = f"gives {out['name']} of shape (n, {', '.join(map(str, shape))}), manifest: {out['shape']}"
    if problem:
        raise BrokenArtifact(f"TensorRT engine {Path(path).name} {problem}; {REBUILD_HINT}")


# ---- execution contexts: each call's failure says what TensorRT logged ----------------------------------------


def execution_context(engine):
    """An execution context at NVTX verbosity NONE. Our engines are built with DETAILED profiling verbosity (for the
    engine inspector); contexts inherit it, and NVIDIA notes DETAILED generally adds latency to execute_async_v3.
    trtexec sets the context's verbosity explicitly too (to its --profilingVerbosity, LAYER_NAMES_ONLY by default)."""
    import tensorrt as trt

    mark = trt_logger().count
    context = engine.create_execution_context()
    if context is None:
        raise RuntimeError(f"TensorRT could not create an execution context: {logged_errors(mark)}")
    if hasattr(context, "nvtx_verbosity"):
        context.nvtx_verbosity = trt.ProfilingVerbosity.NONE
    return context


def set_shape(context, name: str, shape: tuple[int, ...]) -> None:
    mark = trt_logger().count
    if not context.set_input_shape(name, tuple(int(d) for d in shape)):
        raise UserError(f"TensorRT refused input {name!r} of shape {tuple(shape)} (outside the engine's profile?): "
                        f"{logged_errors(mark)}")


def set_address(context, name: str, ptr: int) -> None:
    mark = trt_logger().count
    if not context.set_tensor_address(name, int(ptr)):
        raise RuntimeError(f"TensorRT refused the address of tensor {name!r}: {logged_errors(mark)}")


def execute(context, stream) -> None:
    mark = trt_logger().count
    if not context.execute_async_v3(int(stream)):
        raise RuntimeError(f"TensorRT execution failed: {logged_errors(mark)}")
