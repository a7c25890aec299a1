"""Backends: one small interface (run a batch, close) over PyTorch, ONNX Runtime and TensorRT.

`run(z, labels, kind)` takes float32 z (b, latent_dim) and int64 labels (b,) or None, b <= the backend's batch
limit, and returns uint8 (b, h, w, c) for kind="uint8" or float32 (b, c, h, w) for kind="float". A backend says
which kinds it can produce; everything else (latents, chunking, checks) lives in the Sampler.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..images import to_uint8


class BackendUnavailable(UserError):
    """The backend cannot run here (not installed, no GPU, engine for another GPU); the message says why."""


def float_to_uint8(x: np.ndarray, value_range) -> np.ndarray:
    """float (b, c, h, w) -> uint8 (b, h, w, c), the same arithmetic as gandeploy.images.to_uint8."""
    return to_uint8(torch.from_numpy(x), value_range)


class TorchBackend:
    name = "torch"
    kinds = ("uint8", "float")

    def __init__(self, generator_dir: Path, device: str, precision: str, compile: bool = False,
                 micro_batch: int | None = None):
        from ..artifacts import load_generator

        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendUnavailable("torch fp16 needs a CUDA device; use precision='fp32' on CPU")
        self.device = torch.device(device)
        model, self.config = load_generator(generator_dir, self.device)
        model = model.to(memory_format=torch.channels_last)  # faster on CPU (oneDNN) and on GPUs
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = model.to(self.dtype)
        self.forward = torch.compile(self.model, dynamic=False) if compile else self.model
        self.value_range = tuple(self.config["value_range"])
        # Every forward has the same shape, (micro_batch, latent_dim), padded as needed: PyTorch picks kernels by
        # shape, and kernels picked for other batch sizes differ in the last bits (measured up to 1e-7 on CPU, one
        # uint8 level in ~2,000 pixels). One shape keeps image k of seed s byte-identical however requests are
        # batched, and is the fixed shape CUDA graphs and torch.compile want. Small on CPU, where padding costs
        # latency; larger on GPUs, where it costs almost nothing.
        self.micro_batch = micro_batch or (8 if self.device.type == "cpu" else 64)
        # One forward at a time: each already uses every core, and concurrent CPU forwards split the thread pool
        # differently from call to call.
        self.lock = threading.Lock()

    def run(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
        m = self.micro_batch
        out = []
        for start in range(0, len(z), m):
            zc = z[start:start + m]
            b = len(zc)
            if b < m:  # pad with copies of the last row; their outputs are dropped
                zc = np.concatenate([zc, np.repeat(zc[-1:], m - b, axis=0)])
            yc = None
            if labels is not None:
                yc = labels[start:start + m]
                yc = np.concatenate([yc, np.repeat(yc[-1:], m - b)]) if b < m else yc
            out.append(self._forward(zc, yc, kind)[:b])
        return out[0] if len(out) == 1 else np.concatenate(out)

    def _forward(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
        with self.lock, torch.inference_mode():
            zt = torch.from_numpy(z).to(self.device, self.dtype, non_blocking=True)
            yt = torch.from_numpy(labels).to(self.device) if labels is not None else None
            x = self.forward(zt, yt)  # (m, c, h, w)
            if kind == "uint8":  # convert on the device: a quarter of the bytes cross to the host
                return to_uint8(x, self.value_range)
            return x.float().cpu().numpy()

    def close(self) -> None:
        self.model = self.forward = None


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, output_kind: str, device: str, threads: int = 0):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(f"onnxruntime {ort.__version__} has no CUDA provider; install "
                                         f"onnxruntime-gpu, or use device='cpu'")
            index = int(device.split(":")[1]) if ":" in device else 0
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads  # 0: one per physical core
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads sleep instead of spinning: spinning took the cores the batching front's callers need
        # (16 single-image callers went from 0.6x to 0.85-1.0x of one batch of 16) and did not lower batch-1 latency.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.kinds = (output_kind,)
        self.conditional = len(self.session.get_inputs()) == 2

    def run(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
        feeds = {"z": z, "label": labels} if self.conditional else {"z": z}
        return self.session.run(None, feeds)[0]  # ONNX Runtime sessions are safe to call from many threads

    def close(self) -> None:
        self.session = None


class TensorRTBackend:
    """One execution context per concurrent caller (a context is not thread-safe), each with device buffers sized
    for the profile's max batch and pinned host memory for the output."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, manifest: dict, streams: int = 2):
        from ..export import tensorrt as trt_export

        reason = trt_export.availability()
        if reason is not None:
            raise BackendUnavailable(reason)
        self.engine = trt_export.load_engine(engine_path)  # EngineMismatch when built for another GPU/version
        self.kinds = (manifest["output"]["kind"],)
        self.min_batch, self.max_batch = manifest["batch"]["min"], manifest["batch"]["max"]
        self.inputs = [spec["name"] for spec in manifest["inputs"]]
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.out_dtype = torch.uint8 if self.kinds[0] == "uint8" else torch.float32
        self.out_shape = tuple(manifest["output"]["shape"][1:])
        self.pool: queue.Queue = queue.Queue()
        for _ in range(streams):
            context = self.engine.create_execution_context()
            z = torch.empty((self.max_batch, manifest["generator"]["latent_dim"]), device=self.device)
            label = torch.empty((self.max_batch,), dtype=torch.int64, device=self.device)
            out = torch.empty((self.max_batch, *self.out_shape), dtype=self.out_dtype, device=self.device)
            host = torch.empty(out.shape, dtype=self.out_dtype, pin_memory=True)
            self.pool.put((context, torch.cuda.Stream(self.device), z, label, out, host))

    def run(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
        b = len(z)
        padded = max(b, self.min_batch)  # the profile may not accept batches below its minimum
        context, stream, dz, dlabel, dout, host = self.pool.get()
        try:
            with torch.cuda.stream(stream):
                dz[:b].copy_(torch.from_numpy(z), non_blocking=True)
                buffers = {"z": dz, "images": dout}
                if labels is not None:
                    dlabel[:b].copy_(torch.from_numpy(labels), non_blocking=True)
                    buffers["label"] = dlabel
                for name in self.inputs:
                    context.set_input_shape(name, (padded, *buffers[name].shape[1:]))
                for name, tensor in buffers.items():
                    context.set_tensor_address(name, tensor.data_ptr())
                if not context.execute_async_v3(stream.cuda_stream):
                    raise RuntimeError("TensorRT execution failed")
                host[:b].copy_(dout[:b], non_blocking=True)
            stream.synchronize()
            return host[:b].numpy().copy()  # the pinned buffer is reused by the next call
        finally:
            self.pool.put((context, stream, dz, dlabel, dout, host))

    def close(self) -> None:
        self.pool = queue.Queue()
        self.engine = None

