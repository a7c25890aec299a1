"""ONNX Runtime: the export's generator.onnx (or its FP16 twin) on the CPU or CUDA provider."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from ...errors import BrokenArtifact, first_line
from ...formats.manifest import FP16_FILE, FP32_FILE
from ..device import device_index
from . import BackendUnavailable, Source


def load(source: Source, device: str, precision: str, threads: int = 0) -> "OnnxRuntimeBackend":
    if source.manifest is None:
        raise BackendUnavailable(f"onnxruntime needs an export folder (gandeploy export {source.path})")
    file = FP16_FILE if precision == "fp16" else FP32_FILE
    if file not in source.manifest["artifacts"]:
        raise BackendUnavailable(f"{source.path} has no {file}; re-export with --fp16")
    return OnnxRuntimeBackend(source, source.path / file, device, threads)


def session_options(threads: int = 0) -> ort.SessionOptions:
    """What every session of ours runs with (the Sampler's and the bare one it is benchmarked against)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads  # 0: one per physical core
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spinning: spinning took the cores the batching front's callers need
    # (16 single-image callers went from 0.6x to 0.85-1.0x of one batch of 16) and did not lower batch-1 latency.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, source: Source, onnx_path, device: str, threads: int = 0):
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(f"onnxruntime {ort.__version__} has no CUDA provider; install "
                                         f"onnxruntime-gpu (pip install 'gandeploy[gpu]'), or use device='cpu'")
            providers = [("CUDAExecutionProvider", {"device_id": device_index(device)}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(onnx_path), session_options(threads), providers=providers)
        except Exception as e:  # ONNX Runtime's own exception types: a damaged or foreign file
            first = first_line(e)
            raise BrokenArtifact(f"ONNX Runtime cannot load {onnx_path} ({first[:200]}); the file is damaged "
                                     f"or not this export's: re-export") from None
        self.provider = self.session.get_providers()[0]
        if device.startswith("cuda") and self.provider != "CUDAExecutionProvider":
            raise BackendUnavailable(f"onnxruntime could not start its CUDA provider on {device}; check the CUDA "
                                     f"and cuDNN libraries onnxruntime-gpu {ort.__version__} needs")
        self.kinds = (source.output_kind,)
        self._check_signature(source.manifest, onnx_path)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.output = [self.session.get_outputs()[0].name]

    def _check_signature(self, manifest: dict, onnx_path) -> None:
        """The graph's inputs and output must be what the manifest says: a wrong file is refused, not run."""
        declared = [(i["name"], i["dtype"]) for i in manifest["inputs"]]
        types = {"tensor(float)": "float32", "tensor(int64)": "int64", "tensor(uint8)": "uint8"}
        found = [(i.name, types.get(i.type, i.type)) for i in self.session.get_inputs()]
        outputs = [(o.name, types.get(o.type, o.type)) for o in self.session.get_outputs()]
        out = manifest["output"]
        if found != declared or outputs != [(out["name"], out["dtype"])]:
            raise BrokenArtifact(f"{onnx_path} takes {found} and gives {outputs}, but the manifest declares "
                                     f"{declared} -> {out['name']} {out['dtype']}; re-export")
        shape = self.session.get_outputs()[0].shape  # e.g. ['batch', 28, 28, 1]: the fixed dims must agree
        fixed = [d for d in shape[1:]]
        if len(shape) != len(out["shape"]) or any(isinstance(d, int) and d != w for d, w in
                                                   zip(fixed, out["shape"][1:])):
            raise BrokenArtifact(f"{onnx_path} gives images of shape {shape}, but the manifest declares "
                                     f"{out['shape']}; re-export")

    def run(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
        feeds = {self.inputs[0]: z} if labels is None else {self.inputs[0]: z, self.inputs[1]: labels}
        return self.session.run(self.output, feeds)[0]  # ONNX Runtime sessions are safe to call from many threads

    def close(self) -> None:
        self.session = None
