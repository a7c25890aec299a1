"""Running one batch through an engine at build time, to check it against ONNX Runtime before the export records
it: one context, one stream, buffers of the feeds' sizes. Not a serving path (that is
gandeploy.runtime.backends.tensorrt's TensorRTBackend, with contexts, buffers and pinned memory kept per stream)."""

from __future__ import annotations

import numpy as np

from ...errors import UserError
from ...runtime.backends.tensorrt import (
    CudaError,
    check_cuda,
    cuda_runtime,
    execute,
    execution_context,
    free_all,
    io_tensors,
    require,
    set_address,
    set_shape,
)


def run_engine(engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one batch (build-time verification, not a serving path): one context, one stream, device buffers of the
    feeds' sizes; returns the outputs as numpy arrays."""
    require()
    import tensorrt as trt

    cudart = cuda_runtime()
    inputs, outputs = io_tensors(trt, engine)
    if set(feeds) != set(inputs):
        raise UserError(f"the engine takes inputs {sorted(inputs)}, got {sorted(feeds)}")
    context = execution_context(engine)
    arrays = {n: np.ascontiguousarray(feeds[n], dtype=trt.nptype(engine.get_tensor_dtype(n))) for n in inputs}
    for name in inputs:
        set_shape(context, name, arrays[name].shape)
    for name in outputs:  # shapes are known once every input shape is set
        shape = tuple(context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise RuntimeError(f"output {name!r} has a data-dependent shape {shape}, which run_engine does not handle")
        arrays[name] = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
    device, streams = {}, []
    try:
        streams.append(check_cuda(cudart.cudaStreamCreate(), "cudaStreamCreate"))
        stream = streams[0]
        for name, array in arrays.items():
            device[name] = int(check_cuda(cudart.cudaMalloc(max(array.nbytes, 1)), f"cudaMalloc({array.nbytes})"))
            set_address(context, name, device[name])
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name in inputs:
            check_cuda(cudart.cudaMemcpyAsync(device[name], arrays[name].ctypes.data, arrays[name].nbytes, h2d,
                                              stream), "cudaMemcpyAsync (input)")
        execute(context, stream)
        for name in outputs:
            check_cuda(cudart.cudaMemcpyAsync(arrays[name].ctypes.data, device[name], arrays[name].nbytes, d2h,
                                              stream), "cudaMemcpyAsync (output)")
        check_cuda(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
    finally:
        problem = free_all(device=device.values(), streams=streams)
    if problem:
        raise CudaError(problem)
    return {name: arrays[name] for name in outputs}
