"""The TensorRT backend: the registry's `load` picks the export's engine for this TensorRT and GPU, and
`TensorRTBackend` runs it with one execution context per concurrent caller. `tensorrt` and cuda-python are imported
inside functions only, so this module imports without them."""

from __future__ import annotations

import queue

import numpy as np

from ....errors import UserError
from ...device import device_index
from .. import BackendUnavailable, Source
from .cuda import CudaError, alloc_pinned, check_cuda, cuda_runtime, free_all
from .engine import (
    TensorRTUnavailable,
    availability,
    check_signature,
    execute,
    execution_context,
    gpu_info,
    load_engine,
    require,
    set_address,
    set_shape,
)


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
        self.context = execution_context(engine)
        self.device, self.host, self.stream = [], [], None
        try:
            self.stream = check_cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
            self.inputs = []  # (name, device pointer, row shape, bytes per row)
            for name, row, dtype in inputs:
                row_bytes = int(np.prod(row, dtype=np.int64)) * dtype.itemsize
                ptr = int(check_cuda(cudart.cudaMalloc(max_batch * row_bytes), "cudaMalloc (input)"))
                self.device.append(ptr)
                set_address(self.context, name, ptr)
                self.inputs.append((name, ptr, row, row_bytes))
            name, row, dtype = output
            self.out_row_bytes = int(np.prod(row, dtype=np.int64)) * dtype.itemsize
            self.out_ptr = int(check_cuda(cudart.cudaMalloc(max_batch * self.out_row_bytes), "cudaMalloc (output)"))
            self.device.append(self.out_ptr)
            set_address(self.context, name, self.out_ptr)
            host_ptr, self.out = alloc_pinned(cudart, (max_batch, *row), dtype)
            self.host.append(host_ptr)
        except BaseException:
            self.free()
            raise

    def run(self, cudart, device: int, feeds: list[np.ndarray], b: int, padded: int) -> np.ndarray:
        check_cuda(cudart.cudaSetDevice(device), f"cudaSetDevice({device})")  # per thread: callers come from many
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for (name, ptr, row, row_bytes), array in zip(self.inputs, feeds, strict=True):
            check_cuda(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, b * row_bytes, h2d, self.stream),
                       "cudaMemcpyAsync (input)")
            if padded > b:  # rows the profile's minimum batch makes us run: zeros, never stale or unset memory
                check_cuda(cudart.cudaMemsetAsync(ptr + b * row_bytes, 0, (padded - b) * row_bytes, self.stream),
                           "cudaMemsetAsync (padding)")
            set_shape(self.context, name, (padded, *row))
        execute(self.context, self.stream)
        check_cuda(cudart.cudaMemcpyAsync(self.out.ctypes.data, self.out_ptr, b * self.out_row_bytes, d2h,
                                          self.stream), "cudaMemcpyAsync (output)")
        check_cuda(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        return self.out[:b].copy()  # the pinned buffer is reused by the next run

    def free(self) -> str | None:
        self.context = None
        problem = free_all(self.device, self.host, [self.stream] if self.stream is not None else [])
        self.device, self.host, self.stream = [], [], None
        return problem


class TensorRTBackend:
    """An engine with one execution context per concurrent caller (a context is not thread-safe), each with its own
    stream, device buffers sized for the profile's max batch and pinned host memory for the output."""

    name = "tensorrt"

    def __init__(self, engine_path, manifest: dict, device: str = "cuda", streams: int = 2):
        require()
        import tensorrt as trt

        self.cudart = cuda_runtime()
        self.device = device_index(device)
        check_cuda(self.cudart.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
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
