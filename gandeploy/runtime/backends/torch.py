"""PyTorch: the generator itself (the export's generator/ folder, or a run's), eager or torch.compile'd."""

from __future__ import annotations

import threading

import numpy as np
import torch

from ...formats.generator import generator_dir
from ...formats.images import levels
from ...formats.manifest import GENERATOR_DIR
from . import BackendUnavailable, Source


def load(source: Source, device: str, precision: str, compile: bool = False,
         micro_batch: int | None = None) -> "TorchBackend":
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"this torch {torch.__version__} cannot use {device} (CUDA build: "
                                 f"{torch.version.cuda or 'none'}); install a CUDA build of torch, or use cpu")
    folder = source.path / GENERATOR_DIR if source.manifest else generator_dir(source.path)
    if source.manifest and not (folder / "config.json").is_file():
        made = source.manifest.get("source", {})
        where = made.get("module") or made.get("arch") or "a module"
        raise BackendUnavailable(f"{source.path} carries no PyTorch generator (it was exported from {where}); run it "
                                 f"on onnxruntime or tensorrt")
    return TorchBackend(folder, device, precision, compile, micro_batch)


class TorchBackend:
    name = "torch"
    kinds = ("uint8", "float")

    def __init__(self, folder, device: str, precision: str, compile: bool = False, micro_batch: int | None = None):
        from ...artifacts import load_generator  # the model code: below the serving line, imported only here

        if precision == "fp16" and not device.startswith("cuda"):
            raise BackendUnavailable("torch fp16 needs a CUDA device; use precision='fp32' on CPU")
        self.device = torch.device(device)
        self.provider = str(self.device)
        model, self.config = load_generator(folder, self.device)
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
                return levels(x.float(), self.value_range).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            return x.float().cpu().numpy()

    def close(self) -> None:
        self.model = self.forward = None
