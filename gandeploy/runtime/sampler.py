"""The Sampler: one API over PyTorch, ONNX Runtime and TensorRT for deterministic, batched sampling.

Image k of seed s is computed from latents(s, k) alone (gandeploy.latents), so it does not depend on n, on
chunking, on the batch it shared with other requests, nor on the thread it ran on.
"""

from __future__ import annotations

import asyncio
import logging
import numbers
import warnings
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..latents import latents as draw_latents
from .backends import BackendUnavailable, OnnxRuntimeBackend, TensorRTBackend, TorchBackend, float_to_uint8
from .batching import BatchingFront

log = logging.getLogger("gandeploy")

BACKENDS = ("torch", "onnxruntime", "tensorrt")
MAX_IMAGES = 65536  # per call, unless the Sampler is given another limit


class SamplerError(UserError):
    """Bad input to a Sampler: the message names the problem and the fix."""


class Sampler:
    """Load an export folder (or a run / generator folder, torch backend only) and sample it.

        with Sampler("exports/dcgan_mnist") as sampler:
            images = sampler.sample(16, seed=7)        # uint8 (16, h, w, c)
            future = sampler.submit(1, seed=8)         # coalesced with other callers' requests
    """

    def __init__(self, path: str | Path, backend: str = "auto", device: str = "auto", precision: str = "fp32",
                 max_batch: int | None = None, max_images: int = MAX_IMAGES, max_delay_ms: float = 0.0,
                 max_queue: int = 4096, threads: int = 0, compile: bool = False, micro_batch: int | None = None,
                 on_batch=None, workers: int = 1):
        if backend not in ("auto", *BACKENDS):
            raise SamplerError(f"backend {backend!r} is not one of auto, {', '.join(BACKENDS)}")
        if precision not in ("fp32", "fp16"):
            raise SamplerError(f"precision {precision!r} is not fp32 or fp16")
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        self.config = self.manifest["generator"] if self.manifest else _generator_config(self.path)
        device = _resolve_device(device)
        self._torch_micro_batch = micro_batch
        self.backend, why = self._open(backend, device, precision, threads, compile)
        limit = self.manifest["batch"]["max"] if self.manifest else 256
        self.max_batch = int(max_batch or limit)
        if self.max_batch < 1 or (self.backend.name == "tensorrt" and self.max_batch > limit):
            raise SamplerError(f"max_batch {self.max_batch} must be between 1 and {limit} for this backend")
        self.max_images = max_images
        self.output_kind = "uint8" if "uint8" in self.backend.kinds else "float"
        self._front_args = (max_delay_ms / 1000.0, max_queue, on_batch, workers)
        self._front: BatchingFront | None = None
        self.info = {"path": str(self.path), "backend": self.backend.name, "device": device,
                     "precision": precision, "max_batch": self.max_batch, "why": why,
                     "provider": getattr(self.backend, "provider", None), "generator": dict(self.config)}
        log.info("gandeploy Sampler: %s on %s (%s)", self.backend.name, device, why)

    # ---- opening a backend -------------------------------------------------------------------------------------

    def _open(self, backend: str, device: str, precision: str, threads: int, compile: bool):
        if backend != "auto":
            return self._make(backend, device, precision, threads, compile), "asked for"
        reasons = []
        for name in ("tensorrt", "onnxruntime", "onnxruntime-cpu", "torch"):
            try:
                if name == "onnxruntime-cpu":
                    if not device.startswith("cuda"):
                        continue
                    made = self._make("onnxruntime", "cpu", precision, threads, compile)
                else:
                    made = self._make(name, device, precision, threads, compile)
            except (BackendUnavailable, ImportError, UserError) as e:
                reasons.append(f"{name}: {str(e).splitlines()[0]}")
                continue
            why = "first that runs here" + (f" (skipped {'; '.join(reasons)})" if reasons else "")
            if reasons and name != "tensorrt" and any(r.startswith("tensorrt: cannot load") for r in reasons):
                warnings.warn(f"gandeploy Sampler fell back to {name}: {reasons[0]}", stacklevel=3)
            return made, why
        raise SamplerError(f"no backend can run {self.path} here: {'; '.join(reasons)}")

    def _make(self, name: str, device: str, precision: str, threads: int, compile: bool):
        m = self.manifest
        if name == "torch":
            folder = self.path / "generator" if m else self.path
            return TorchBackend(folder, device, precision, compile, self._torch_micro_batch)
        if m is None:
            raise BackendUnavailable(f"{name} needs an export folder (gandeploy export {self.path})")
        if name == "onnxruntime":
            file = "generator.fp16.onnx" if precision == "fp16" else "generator.onnx"
            if file not in m["artifacts"]:
                raise BackendUnavailable(f"{self.path} has no {file}; re-export with --fp16")
            try:
                return OnnxRuntimeBackend(self.path / file, m["output"]["kind"], device, threads)
            except ImportError as e:
                raise BackendUnavailable(f"onnxruntime is not installed ({e}); pip install 'gandeploy[onnx]'") from None
        engines = [e for e in m.get("engines", []) if e["precision"] == precision]
        if not engines:
            raise BackendUnavailable(f"{self.path} has no {precision} TensorRT engine; gandeploy export "
                                     f"{self.path} --trt")
        if not device.startswith("cuda"):
            raise BackendUnavailable("TensorRT needs a CUDA device")
        return TensorRTBackend(self.path / engines[-1]["file"], m)

    # ---- the API -------------------------------------------------------------------------------------------------

    def latents(self, n: int, seed: int) -> np.ndarray:
        """float32 (n, latent_dim): the latents image 0..n-1 of `seed` are made from."""
        n = self._check_n(n)
        try:
            return draw_latents(seed, n, self.config["latent_dim"])  # checks the seed
        except ValueError as e:
            raise SamplerError(str(e)) from None

    def sample(self, n: int, seed: int, labels=None) -> np.ndarray:
        """uint8 (n, h, w, c): images 0..n-1 of `seed` (labels: one int or n ints, for conditional models)."""
        z = self.latents(n, seed)
        return self._run(z, self.check_labels(labels, len(z)), "uint8")

    def generate(self, z, labels=None) -> np.ndarray:
        """float32 (n, c, h, w) in the generator's value range, from your own latents z (n, latent_dim)."""
        z = self._check_z(z)
        if "float" not in self.backend.kinds:
            raise SamplerError(f"{self.path} was exported with uint8 output, which has no float images; re-export "
                               f"with `gandeploy export --output float`, or use backend='torch'")
        return self._run(z, self.check_labels(labels, len(z)), "float")

    def interpolate(self, seed_a: int, seed_b: int, steps: int, labels=None) -> np.ndarray:
        """uint8 (steps, h, w, c) along the great circle from image 0 of seed_a to image 0 of seed_b (slerp, as
        White 2016 recommends for Gaussian latents)."""
        steps = self._check_n(steps)
        a, b = self.latents(1, seed_a)[0].astype(np.float64), self.latents(1, seed_b)[0].astype(np.float64)
        omega = np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0))
        t = np.linspace(0.0, 1.0, steps)[:, None]
        if omega < 1e-6:
            z = (1 - t) * a + t * b
        else:
            z = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
        return self._run(z.astype(np.float32), self.check_labels(labels, steps), "uint8")

    def submit(self, n: int, seed: int, labels=None) -> Future:
        """Like sample, through the batching front: returns a Future at once; raises Overloaded when the queue is
        full. Requests from all threads are coalesced up to max_batch images: whatever waits when the backend
        becomes free (Triton's default), or, with max_delay_ms > 0, what arrives within that delay."""
        z = self.latents(n, seed)
        labels = self.check_labels(labels, len(z))
        if self._front is None:
            delay, queue, on_batch, workers = self._front_args
            self._front = BatchingFront(lambda zz, ll: self._run(zz, ll, "uint8"), self.max_batch, delay, queue,
                                        on_batch, workers)
        return self._front.submit(z, labels)

    @property
    def queued(self) -> int:
        """Images waiting in the batching front's queue (not counting the batch being computed)."""
        return self._front.queued if self._front is not None else 0

    async def asample(self, n: int, seed: int, labels=None) -> np.ndarray:
        """The asyncio form of submit."""
        return await asyncio.wrap_future(self.submit(n, seed, labels))

    def close(self) -> None:
        if self._front is not None:
            self._front.close()
            self._front = None
        self.backend.close()

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals ------------------------------------------------------------------------------------------------

    def _run(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
        native = kind if kind in self.backend.kinds else self.output_kind
        chunks = []
        for start in range(0, len(z), self.max_batch):
            stop = start + self.max_batch
            chunks.append(self.backend.run(z[start:stop], None if labels is None else labels[start:stop], native))
        out = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
        if native != kind:  # a float-only export asked for uint8: convert here, as the uint8 graph would
            out = float_to_uint8(out, tuple(self.config["value_range"]))
        return out

    def _check_n(self, n) -> int:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise SamplerError(f"n must be an integer, got {n!r}")
        if not 1 <= n <= self.max_images:
            raise SamplerError(f"n={n} is out of range; ask for 1 to {self.max_images} images per call")
        return int(n)

    def _check_z(self, z) -> np.ndarray:
        z = np.asarray(z)
        dim = self.config["latent_dim"]
        if z.ndim != 2 or z.shape[1] != dim:
            raise SamplerError(f"z has shape {z.shape}; expected (n, {dim})")
        if z.dtype != np.float32:
            raise SamplerError(f"z has dtype {z.dtype}; expected float32 (z.astype(np.float32))")
        self._check_n(len(z))
        return np.ascontiguousarray(z)

    def check_labels(self, labels, n: int) -> np.ndarray | None:
        """labels as the backends take them (int64 (n,), or None); SamplerError naming the problem otherwise."""
        classes = self.config["num_classes"]
        if not classes:
            if labels is not None:
                raise SamplerError("this generator is unconditional; pass no labels")
            return None
        if labels is None:
            raise SamplerError(f"this generator is class-conditional: pass labels (one int, or {n} ints in "
                               f"0..{classes - 1})")
        array = np.asarray(labels)
        if array.dtype.kind not in "iu":
            raise SamplerError(f"labels must be integers, got {array.dtype}")
        if array.ndim == 0:
            array = np.full(n, int(array))
        if array.shape != (n,):
            raise SamplerError(f"labels has shape {array.shape}; expected one int or ({n},)")
        if array.min() < 0 or array.max() >= classes:
            bad = array[(array < 0) | (array >= classes)][0]
            raise SamplerError(f"label {bad} is out of range; this generator has classes 0..{classes - 1}")
        return array.astype(np.int64)


def _read_manifest(path: Path) -> dict | None:
    from ..export.manifest import load_export

    if (path / "manifest.json").is_file():
        return load_export(path)
    if not path.exists():
        raise SamplerError(f"{path} does not exist; pass an export folder (exports/<name>) or a run folder")
    return None


def _generator_config(path: Path) -> dict:
    from ..artifacts import generator_dir

    folder = generator_dir(path)
    if not (folder / "config.json").is_file():
        raise SamplerError(f"{path} is neither an export (manifest.json) nor a generator folder (config.json); "
                           f"pass exports/<name> or runs/<name>")
    import json

    return json.loads((folder / "config.json").read_text())


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SamplerError(f"device {device!r}: no CUDA GPU is visible; use device='cpu'")
    if device != "cpu" and not device.startswith("cuda"):
        raise SamplerError(f"device {device!r}: expected auto, cpu or cuda[:N]")
    return device
