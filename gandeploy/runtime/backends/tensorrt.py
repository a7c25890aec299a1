"""TensorRT: an export's engine plan (`gandeploy export --trt`), run without torch.

Buffers, streams and copies come from NVIDIA's CUDA Python bindings (cuda-python, `cuda.bindings.runtime`) rather than
polygraphy.cuda: they are NVIDIA's own bindings, what the TensorRT Python samples use, and keep Polygraphy out of a
serving image. `tensorrt` and cuda-python are imported inside functions only, so this module imports without them.

The pure helpers the builder shares (version parsing, engine file names) live here too, so that a serving image
needs nothing from gandeploy.export.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import logging
import queue
import re
from pathlib import Path

import numpy as np

from ...errors import BrokenArtifact, UserError
from ..device import cuda_device_count, device_index
from . import BackendUnavailable, Source

MIN_TENSORRT = (10, 0)
PRECISIONS = ("fp16", "fp32")
INSTALL = "pip install 'gandeploy[gpu]'"
REBUILD_HINT = "rebuild it on this machine with `gandeploy export --trt`"

_log = logging.getLogger(__name__)
_FILENAME = re.compile(r"^generator\.(?P<gpu>[a-z0-9-]+)\.sm(?P<sm>\d+)\.trt(?P<trt>[0-9a-z.]+?)\."
                       r"(?P<precision>fp16|fp32)\.plan$")


class TensorRTUnavailable(BackendUnavailable):
    """tensorrt or cuda-python does not import, or no CUDA GPU is visible; the message says which and the fix."""


class EngineMismatch(BrokenArtifact):
    """An engine file that this TensorRT / GPU cannot deserialize (built elsewhere, or damaged): the export fails
    on this machine until the engine is rebuilt here."""


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message has cudaGetErrorString's text."""


# ---- pure helpers -----------------------------------------------------------------------------------------------


def version_tuple(version: str) -> tuple[int, int]:
    """'10.13.3.9' -> (10, 13)."""
    match = re.match(r"^\s*(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(match.group(1)), int(match.group(2))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _version_slug(version: str) -> str:
    return re.sub(r"[^0-9a-z.]+", "-", version.strip().lower()).strip("-.")


def engine_filename(gpu_name: str, compute_capability: tuple[int, int], trt_version: str, precision: str) -> str:
    """e.g. 'generator.nvidia-h100-80gb-hbm3.sm90.trt10.13.3.fp16.plan' (slugified GPU name, lower case)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    major, minor = compute_capability
    return (f"generator.{_slug(gpu_name) or 'gpu'}.sm{int(major)}{int(minor)}.trt{_version_slug(trt_version)}."
            f"{precision}.plan")


def _built_for(path: Path) -> str:
    """What an engine file was built for, read from its name where it follows engine_filename."""
    match = _FILENAME.match(Path(path).name)
    if match is None:
        return "another TensorRT version or GPU"
    return f"TensorRT {match['trt']} on {match['gpu']} (sm{match['sm']})"


def _one_line(parts) -> str:
    return "; ".join(" ".join(str(p).split()) for p in parts if str(p).strip())


# ---- CUDA (cuda-python) ---------------------------------------------------------------------------------------------


def _cudart():
    """cuda-python's runtime API: `cuda.bindings.runtime` (cuda-python >= 12.6), else the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _check(result, what: str):
    """A cuda-python call returns (cudaError_t, *values): the values, or CudaError with CUDA's own text."""
    cudart = _cudart()
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        text = cudart.cudaGetErrorString(err)[1]
        text = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
        raise CudaError(f"CUDA {what} failed: {getattr(err, 'name', err)}: {text}")
    return values[0] if len(values) == 1 else (values or None)


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
        cudart = _cudart()
    except Exception as exc:  # noqa: BLE001
        missing.append(f"cuda-python ({type(exc).__name__}: {exc})")
        fixes.append(INSTALL)
        gpu = "" if cuda_device_count() else "the CUDA driver shows none"
    else:
        try:
            count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
            gpu = "" if count > 0 else "cudaGetDeviceCount found none"
        except Exception as exc:  # noqa: BLE001 -- no driver: CudaError; a half-installed cuda-python: others
            gpu = str(exc)
    if gpu:
        missing.append(f"a CUDA GPU ({gpu})")
        fixes.append("run on a machine with an NVIDIA GPU and its driver")
    if not missing:
        return None
    return _one_line([f"TensorRT needs {' and '.join(missing)}: {'; '.join(dict.fromkeys(fixes))}"])


def _require() -> None:
    reason = availability()
    if reason is not None:
        raise TensorRTUnavailable(reason)


def current_device() -> int:
    """The CUDA device this thread uses (where TensorRT builds and deserializes)."""
    _require()
    return int(_check(_cudart().cudaGetDevice(), "cudaGetDevice"))


def gpu_info(device_index: int = 0) -> tuple[str, tuple[int, int]]:
    """(name, compute capability) of a CUDA device, e.g. ('NVIDIA H100 80GB HBM3', (9, 0))."""
    _require()
    prop = _check(_cudart().cudaGetDeviceProperties(int(device_index)), f"cudaGetDeviceProperties({device_index})")
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return name.split("\x00")[0].strip(), (int(prop.major), int(prop.minor))


def _free_all(device=(), host=(), streams=()) -> str | None:
    """Free everything given, even after a failure; the first failure's message, if any."""
    cudart, first = _cudart(), None
    for call, handles, what in ((cudart.cudaFree, device, "cudaFree"), (cudart.cudaFreeHost, host, "cudaFreeHost"),
                                (cudart.cudaStreamDestroy, streams, "cudaStreamDestroy")):
        for handle in handles:
            try:
                _check(call(handle), what)
            except CudaError as exc:
                first = first or str(exc)
    return first


def _pinned(cudart, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, np.ndarray]:
    """Page-locked host memory (cudaMallocHost) seen as a numpy array; free the pointer with cudaFreeHost."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    ptr = int(_check(cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
    raw = np.ctypeslib.as_array(ctypes.cast(ctypes.c_void_p(ptr), ctypes.POINTER(ctypes.c_ubyte)), (nbytes,))
    return ptr, raw.view(dtype).reshape(shape)


# ---- TensorRT ---------------------------------------------------------------------------------------------------


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


def said(mark: int, limit: int = 3) -> str:
    """What TensorRT logged as errors since `mark`, in one line."""
    return _one_line(trt_logger().since(mark)[-limit:]) or "TensorRT logged no error message"


@functools.lru_cache(maxsize=1)
def trt_runtime():
    """Kept for the process: engines must not outlive the runtime that deserialized them."""
    import tensorrt as trt

    return trt.Runtime(trt_logger())


def load_engine(path):
    """Deserialize an engine file on this thread's CUDA device; EngineMismatch when this TensorRT/GPU cannot
    (built for another one, or damaged), naming both and quoting TensorRT."""
    _require()
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
        told = _one_line([*trt_logger().since(mark)[-2:], *extra])
        raise EngineMismatch(
            f"cannot load TensorRT engine {path}: it was built for {_built_for(path)} or the file is damaged, "
            f"and this machine has TensorRT {trt.__version__} on {gpu} (sm{major}{minor}); {REBUILD_HINT}"
            + (f"; TensorRT said: {told}" if told else ""))
    return engine


def _dtype_name(trt, dtype) -> str:
    try:
        return np.dtype(trt.nptype(dtype)).name
    except TypeError:  # bfloat16, fp8, int4: no numpy type
        return str(dtype)


def _io(trt, engine) -> tuple[list[str], list[str]]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return ([n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT],
            [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT])


def check_signature(engine, manifest: dict, path) -> None:
    """The engine's inputs and output (names, I/O modes, dtypes, trailing dims) must be what the manifest declares:
    a wrong or stale engine file is refused, not run."""
    import tensorrt as trt

    inputs, outputs = _io(trt, engine)
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


def _context(engine):
    """An execution context at NVTX verbosity NONE. Our engines are built with DETAILED profiling verbosity (for the
    engine inspector); contexts inherit it, and NVIDIA notes DETAILED generally adds latency to execute_async_v3.
    trtexec sets the context's verbosity explicitly too (to its --profilingVerbosity, LAYER_NAMES_ONLY by default)."""
    import tensorrt as trt

    mark = trt_logger().count
    context = engine.create_execution_context()
    if context is None:
        raise RuntimeError(f"TensorRT could not create an execution context: {said(mark)}")
    if hasattr(context, "nvtx_verbosity"):
        context.nvtx_verbosity = trt.ProfilingVerbosity.NONE
    return context


def _set_shape(context, name: str, shape: tuple[int, ...]) -> None:
    mark = trt_logger().count
    if not context.set_input_shape(name, tuple(int(d) for d in shape)):
        raise UserError(f"TensorRT refused input {name!r} of shape {tuple(shape)} (outside the engine's profile?): "
                        f"{said(mark)}")


def _set_address(context, name: str, ptr: int) -> None:
    mark = trt_logger().count
    if not context.set_tensor_address(name, int(ptr)):
        raise RuntimeError(f"TensorRT refused the address of tensor {name!r}: {said(mark)}")


def _execute(context, stream) -> None:
    mark = trt_logger().count
    if not context.execute_async_v3(int(stream)):
        raise RuntimeError(f"TensorRT execution failed: {said(mark)}")


def run_engine(engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one batch (build-time verification, not a serving path): one context, one stream, device buffers of the
    feeds' sizes; returns the outputs as numpy arrays."""
    _require()
    import tensorrt as trt

    cudart = _cudart()
    inputs, outputs = _io(trt, engine)
    if set(feeds) != set(inputs):
        raise UserError(f"the engine takes inputs {sorted(inputs)}, got {sorted(feeds)}")
    context = _context(engine)
    arrays = {n: np.ascontiguousarray(feeds[n], dtype=trt.nptype(engine.get_tensor_dtype(n))) for n in inputs}
    for name in inputs:
        _set_shape(context, name, arrays[name].shape)
    for name in outputs:  # shapes are known once every input shape is set
        shape = tuple(context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise RuntimeError(f"output {name!r} has a data-dependent shape {shape}, which run_engine does not handle")
        arrays[name] = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
    device, streams = {}, []
    try:
        streams.append(_check(cudart.cudaStreamCreate(), "cudaStreamCreate"))
        stream = streams[0]
        for name, array in arrays.items():
            device[name] = int(_check(cudart.cudaMalloc(max(array.nbytes, 1)), f"cudaMalloc({array.nbytes})"))
            _set_address(context, name, device[name])
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in inputs:
            _check(cudart.cudaMemcpyAsync(device[name], arrays[name].ctypes.data, arrays[name].nbytes, h2d, stream),
                   "cudaMemcpyAsync (input)")
        _execute(context, stream)
        for name in outputs:
            _check(cudart.cudaMemcpyAsync(arrays[name].ctypes.data, device[name], arrays[name].nbytes, d2h, stream),
                   "cudaMemcpyAsync (output)")
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
    finally:
        problem = _free_all(device=device.values(), streams=streams)
    if problem:
        raise CudaError(problem)
    return {name: arrays[name] for name in outputs}


# ---- the backend --------------------------------------------------------------------------------------------------


def load(source: Source, device: str, precision: str, streams: int = 2) -> TensorRTBackend:
    """The registry's loader: the export's engine of `precision`, preferring one built for this TensorRT and GPU."""
    if source.manifest is None:
        raise BackendUnavailable(f"tensorrt needs an export folder with an engine (gandeploy export {source.path} "
                                 f"--trt)")
    engines = [e for e in source.manifest.get("engines", []) if e.get("precision") == precision]
    if not engines:
        other = sorted({e.get("precision") for e in source.manifest.get("engines", [])} - {precision})
        has = f" (it has {', '.join(other)}: pass precision='{other[0]}', --precision {other[0]} on the CLI)" \
            if other else ""
        build = "--trt" if precision == "fp16" else "--trt --no-fp16"
        raise BackendUnavailable(f"{source.path} has no {precision} TensorRT engine{has}; build one with "
                                 f"gandeploy export {source.path} {build}")
    if not device.startswith("cuda"):
        raise BackendUnavailable(f"TensorRT runs on CUDA devices, not on {device}")
    reason = availability()
    if reason is not None:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    _, (major, minor) = gpu_info(device_index(device))
    here = (trt.__version__, f"{major}.{minor}")
    # this TensorRT and GPU; else this GPU (the newest such); else the newest: load_engine then says what is wrong
    engine = (next((e for e in engines if (e.get("tensorrt_version"), e.get("compute_capability")) == here), None)
              or next((e for e in reversed(engines) if e.get("compute_capability") == here[1]), None)
              or engines[-1])
    return TensorRTBackend(source.path / engine["file"], source.manifest, device, streams)


class _Slot:
    """One execution context with its own stream, device buffers for the profile's max batch and pinned host memory
    for the output. Tensor addresses are set once, here; a run sets input shapes only."""

    def __init__(self, engine, cudart, inputs, output, max_batch: int):
        self.context = _context(engine)
        self.device, self.host, self.stream = [], [], None
        try:
            self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
            self.inputs = []  # (name, device pointer, row shape, bytes per row)
            for name, row, dtype in inputs:
                row_bytes = int(np.prod(row, dtype=np.int64)) * dtype.itemsize
                ptr = int(_check(cudart.cudaMalloc(max_batch * row_bytes), "cudaMalloc (input)"))
                self.device.append(ptr)
                _set_address(self.context, name, ptr)
                self.inputs.append((name, ptr, row, row_bytes))
            name, row, dtype = output
            self.out_row_bytes = int(np.prod(row, dtype=np.int64)) * dtype.itemsize
            self.out_ptr = int(_check(cudart.cudaMalloc(max_batch * self.out_row_bytes), "cudaMalloc (output)"))
            self.device.append(self.out_ptr)
            _set_address(self.context, name, self.out_ptr)
            host_ptr, self.out = _pinned(cudart, (max_batch, *row), dtype)
            self.host.append(host_ptr)
        except BaseException:
            self.free()
            raise

    def run(self, cudart, device: int, feeds: list[np.ndarray], b: int, padded: int) -> np.ndarray:
        _check(cudart.cudaSetDevice(device), f"cudaSetDevice({device})")  # per thread: callers come from many
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for (name, ptr, row, row_bytes), array in zip(self.inputs, feeds, strict=True):
            _check(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, b * row_bytes, h2d, self.stream),
                   "cudaMemcpyAsync (input)")
            if padded > b:  # rows the profile's minimum batch makes us run: zeros, never stale or unset memory
                _check(cudart.cudaMemsetAsync(ptr + b * row_bytes, 0, (padded - b) * row_bytes, self.stream),
                       "cudaMemsetAsync (padding)")
            _set_shape(self.context, name, (padded, *row))
        _execute(self.context, self.stream)
        _check(cudart.cudaMemcpyAsync(self.out.ctypes.data, self.out_ptr, b * self.out_row_bytes, d2h, self.stream),
               "cudaMemcpyAsync (output)")
        _check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return self.out[:b].copy()  # the pinned buffer is reused by the next run

    def free(self) -> str | None:
        self.context = None
        problem = _free_all(self.device, self.host, [self.stream] if self.stream is not None else [])
        self.device, self.host, self.stream = [], [], None
        return problem


class TensorRTBackend:
    """An engine with one execution context per concurrent caller (a context is not thread-safe), each with its own
    stream, device buffers sized for the profile's max batch and pinned host memory for the output."""

    name = "tensorrt"

    def __init__(self, engine_path, manifest: dict, device: str = "cuda", streams: int = 2):
        _require()
        import tensorrt as trt

        self.cudart = _cudart()
        self.device = device_index(device)
        _check(self.cudart.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
        self.engine = load_engine(engine_path)  # EngineMismatch when built for another GPU/version
        check_signature(self.engine, manifest, engine_path)
        gpu, _ = gpu_info(self.device)
        self.provider = f"TensorRT {trt.__version__} on {gpu} (cuda:{self.device})"
        out = manifest["output"]
        self.kinds = (out["kind"],)
        self.min_batch, self.max_batch = int(manifest["batch"]["min"]), int(manifest["batch"]["max"])
        latent = (int(manifest["generator"]["latent_dim"]),)
        # the first input is z (b, latent_dim); a second one, in conditional generators, the labels (b,)
        self.inputs = [(spec["name"], latent if i == 0 else (), np.dtype(spec["dtype"]))
                       for i, spec in enumerate(manifest["inputs"])]
        output = (out["name"], tuple(int(d) for d in out["shape"][1:]), np.dtype(out["dtype"]))
        self.slots: list[_Slot] = []
        self.pool: queue.Queue = queue.Queue()
        try:
            for _ in range(max(1, int(streams))):
                self.slots.append(_Slot(self.engine, self.cudart, self.inputs, output, self.max_batch))
                self.pool.put(self.slots[-1])
        except BaseException:
            self.close()
            raise

    def run(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
        if kind not in self.kinds:
            raise UserError(f"this engine gives {self.kinds[0]} images, not {kind}")
        b = len(z)
        if not 1 <= b <= self.max_batch:
            raise UserError(f"a batch of {b}: this engine takes 1 to {self.max_batch}")
        if len(self.inputs) > 1 and labels is None:
            raise UserError("this generator is conditional: labels are required")
        given = [z, labels][:len(self.inputs)]
        feeds = [np.ascontiguousarray(a, dtype=dtype) for a, (_, _, dtype) in zip(given, self.inputs, strict=True)]
        slot = self.pool.get()
        try:
            return slot.run(self.cudart, self.device, feeds, b, max(b, self.min_batch))
        finally:
            self.pool.put(slot)

    def close(self) -> None:
        slots, self.slots = self.slots, []
        for _ in slots:  # wait for the runs in flight: every slot back in the pool before any memory is freed
            self.pool.get()
        problems = [p for p in (slot.free() for slot in slots) if p]
        self.engine = None
        if problems:
            raise CudaError(problems[0])
