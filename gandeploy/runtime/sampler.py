"""The Sampler: one API over PyTorch, ONNX Runtime and TensorRT for deterministic, batched sampling.

Image k of seed s is computed from latents(s, k) alone (gandeploy.latents), so it does not depend on n, on
chunking, on the batch it shared with other requests, nor on the thread it ran on.
"""

from __future__ import annotations

import asyncio
import logging
import numbers
import os
import threading
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, UserError
from ..formats.generator import generator_dir, read_config
from ..formats.images import to_uint8
from ..formats.labels import LabelError, check_labels
from ..formats.vocabulary import PRECISIONS
from ..formats.latents import latents as draw_latents
from . import backends
from .backends import Source
from .batching import BatchingFront
from .device import resolve_device

log = logging.getLogger("gandeploy")

MAX_IMAGES = 65536  # per call, unless the Sampler is given another limit


class SamplerError(UserError):
    """Bad input to a Sampler: the message names the problem and the fix."""


class Sampler:
    """Load an export folder (or a run / generator folder, torch backend only) and sample it.

        with Sampler("exports/dcgan_mnist") as sampler:
            images = sampler.sample(16, seed=7)        # uint8 (16, h, w, c)
            future = sampler.submit(1, seed=8)         # coalesced with other callers' requests

    `options` go to the backend that is opened: threads (onnxruntime), compile and micro_batch (torch), streams
    (tensorrt). The batching front behind submit/asample is configured with `batching(...)`.
    """

    def __init__(self, path: str | Path, backend: str = "auto", device: str = "auto", precision: str = "fp32",
                 max_batch: int | None = None, max_images: int = MAX_IMAGES, **options):
        if backend != "auto" and backend not in backends.REGISTRY:
            raise SamplerError(f"backend {backend!r} is not one of auto, {', '.join(backends.REGISTRY)}")
        if precision not in PRECISIONS:
            raise SamplerError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
        unknown = sorted(set(options) - set(backends.OPTIONS))
        if unknown:
            raise SamplerError(f"unknown option {unknown[0]!r}; backend options are {', '.join(backends.OPTIONS)}")
        if not isinstance(path, (str, os.PathLike)):
            raise SamplerError(f"path must be a folder path (str or pathlib.Path), got {type(path).__name__}")
        self.path = Path(path)
        self.source = _open_source(self.path)
        self.manifest, self.config = self.source.manifest, self.source.config
        limit = self.manifest["batch"]["max"] if self.manifest else 256
        self.max_batch = int(max_batch or limit)
        if not 1 <= self.max_batch <= limit:  # the export was checked (and engines built) up to its max: no further
            raise SamplerError(f"max_batch {self.max_batch} must be between 1 and {limit}, the largest batch "
                               f"{'this export was checked at' if self.manifest else 'a run folder takes'}")
        self.backend, device, why = self._open(backend, device, precision, options)
        self._lock = threading.Lock()  # guards the batching fronts' creation and close
        self._closed = self._backend_closed = False
        self.max_images = max_images
        self.output_kind = "uint8" if "uint8" in self.backend.kinds else "float"
        self._dim, self._classes = self.config["latent_dim"], self.config["num_classes"]
        self._front_settings = {}
        self._fronts: dict[str, BatchingFront] = {}
        self.info = {"path": str(self.path), "backend": self.backend.name, "device": device,
                     "precision": precision, "max_batch": self.max_batch, "why": why,
                     "provider": getattr(self.backend, "provider", None), "generator": dict(self.config)}
        log.info("gandeploy Sampler: %s on %s (%s)", self.backend.name, device, why)

    # ---- opening a backend -------------------------------------------------------------------------------------

    def _open(self, backend: str, device: str, precision: str, options: dict):
        """(backend, device, why): the one asked for, or the first of backends.AUTO that loads here."""
        if backend != "auto":
            if device != "auto":
                device = resolve_device(device)
                return backends.load(backend, self.source, device, precision, options), device, "asked for"
            # device auto: the backend's device kinds, GPU first where the driver shows one; the first that loads
            kinds = backends.REGISTRY[backend].devices
            order = [k for k in ("cuda", "cpu") if k in kinds and (k == "cpu" or "cuda" == resolve_device("auto"))]
            order = order or [kinds[0]]  # none here (TensorRT without a GPU): its loader says why
            first = None
            for kind in order:
                try:
                    return backends.load(backend, self.source, kind, precision, options), kind, "asked for"
                except backends.BackendUnavailable as e:
                    first = first or e
            raise first
        asked = device.split(":")[0]
        if asked != "auto":
            device = resolve_device(device)  # an explicit device keeps auto to the backends that run there
        reasons = []  # (name, kind, why) of each backend that cannot run here
        for name, kind in backends.AUTO:
            if asked not in ("auto", kind):
                continue
            where = device if asked != "auto" else kind
            try:
                if kind == "cuda" and asked == "auto":
                    where = resolve_device("cuda")
                made = backends.load(name, self.source, where, precision, options)
            except ArtifactError:
                raise  # a damaged or foreign file is the export's failure, not a reason to try the next backend
            except UserError as e:
                reasons.append((name, kind, str(e).splitlines()[0]))
                continue
            skipped = "; ".join(f"{n} on {k}: {why}" for n, k, why in reasons)
            if name == "torch" and self.manifest is not None:  # an export should not need the training stack
                log.warning("gandeploy Sampler runs %s on PyTorch (%s)", self.path, skipped)
            return made, where, "first that runs here" + (f" (skipped {skipped})" if reasons else "")
        for name, kind, why in reasons:
            log.info("gandeploy Sampler: %s on %s cannot run %s: %s", name, kind, self.path, why)
        # the first cause first: the first backend for a device this machine has, the others at log level INFO
        has_gpu = resolve_device("auto") != "cpu"
        here = [r for r in reasons if r[1] == "cpu" or has_gpu] or reasons
        name, kind, why = here[0] if here else (backends.AUTO[0][0], asked, "no backend runs on this device")
        others = f" ({len(reasons) - 1} other backend(s) cannot either: --verbose says why)" if len(reasons) > 1 else ""
        raise SamplerError(f"no backend can run {self.path} here: {name} on {kind}: {why}{others}")

    # ---- the API -------------------------------------------------------------------------------------------------

    def latents(self, n: int, seed: int) -> np.ndarray:
        """float32 (n, latent_dim): the latents image 0..n-1 of `seed` are made from, drawn from the export's
        latent distribution (the standard normal unless it declares another)."""
        n = self._check_n(n)
        try:
            return draw_latents(seed, n, self._dim, dist=self.config.get("latent_distribution"))  # checks the seed
        except ValueError as e:
            raise SamplerError(str(e)) from None

    def sample(self, n: int, seed: int, labels=None) -> np.ndarray:
        """uint8 (n, h, w, c): images 0..n-1 of `seed` (labels: one int or n ints, for conditional models)."""
        z = self.latents(n, seed)
        return self._run(z, self.check_labels(labels, n), "uint8")

    def generate(self, z, labels=None) -> np.ndarray:
        """float32 (n, c, h, w) in the generator's value range, from your own latents z (n, latent_dim):
        `run(z, labels, kind="float")`."""
        return self.run(z, labels, "float")

    def run(self, z, labels=None, kind: str | None = None) -> np.ndarray:
        """Your latents (and labels) through the backend in one call, no batching front: the export's own output
        (uint8 (n, h, w, c) or float32 (n, c, h, w)), what `gandeploy verify` compares with the reference outputs,
        or `kind` ("uint8" or "float"). What the server runs with batching off."""
        z = self._check_z(z)
        labels = self.check_labels(labels, len(z))
        kind = kind or self.source.output_kind
        if kind not in ("uint8", "float"):
            raise SamplerError(f"kind {kind!r} is not uint8 or float")
        if kind == "float" and "float" not in self.backend.kinds:
            raise SamplerError(f"{self.path} was exported with uint8 output, which has no float images; re-export "
                               f"with `gandeploy export --output float`, or use backend='torch'")
        return self._run(z, labels, kind)

    def interpolate(self, seed_a: int, seed_b: int, steps: int, labels=None) -> np.ndarray:
        """uint8 (steps, h, w, c) from image 0 of seed_a to image 0 of seed_b: along the great circle (slerp, as
        White 2016 recommends for Gaussian latents), or on the straight line for an export whose latents are
        bounded (truncated_normal, uniform), which stays inside their box where slerp would leave it."""
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 2 <= steps <= self.max_images:
            raise SamplerError(f"steps={steps!r}: interpolate needs an integer from 2 to {self.max_images}")
        steps = int(steps)
        a, b = self.latents(1, seed_a)[0].astype(np.float64), self.latents(1, seed_b)[0].astype(np.float64)
        omega = np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1.0, 1.0))
        t = np.linspace(0.0, 1.0, steps)[:, None]
        bounded = (self.config.get("latent_distribution") or {}).get("name", "normal") != "normal"
        if omega < 1e-6 or bounded:
            z = (1 - t) * a + t * b
        else:
            z = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
        return self._run(z.astype(np.float32), self.check_labels(labels, steps), "uint8")

    def batching(self, max_delay_ms: float = 0.0, max_queue: int = 4096, workers: int = 1,
                 on_batch=None) -> "Sampler":
        """Set up the batching front behind submit/asample (before the first submit); returns the Sampler.

        Requests from all threads are coalesced up to max_batch images: whatever waits when the backend becomes
        free (Triton's default), or, with max_delay_ms > 0, what arrives within that delay. max_queue counts
        images; `workers` batches may run at once (Triton's instance count); on_batch(images, requests) hears the
        size of every batch."""
        if self._fronts:
            raise SamplerError("batching() must come before the first submit()")
        if max_delay_ms < 0 or max_queue < 1 or workers < 1:
            raise SamplerError(f"batching needs max_delay_ms >= 0, max_queue >= 1 and workers >= 1, got "
                               f"{max_delay_ms}, {max_queue}, {workers}")
        self._front_settings = {"max_delay": max_delay_ms / 1000.0, "max_queue": max_queue, "workers": workers,
                                "on_batch": on_batch}
        return self

    def submit(self, n: int, seed: int, labels=None) -> Future:
        """Like sample, through the batching front: returns a Future at once; raises Overloaded when the queue is
        full."""
        z = self.latents(n, seed)
        labels = self.check_labels(labels, n)
        return self._submit("uint8", z, labels)

    def submit_latents(self, z, labels=None, kind: str | None = None) -> Future:
        """Your latents through the batching front: a Future of the export's own output (uint8 (n, h, w, c) or
        float32 (n, c, h, w)), or of `kind`. What the Open Inference Protocol endpoint uses."""
        z = self._check_z(z)
        labels = self.check_labels(labels, len(z))
        kind = kind or self.source.output_kind
        if kind == "float" and "float" not in self.backend.kinds:
            raise SamplerError(f"{self.path} was exported with uint8 output, which has no float images")
        return self._submit(kind, z, labels)

    def _submit(self, kind: str, z: np.ndarray, labels) -> Future:
        try:
            return self._front_for(kind).submit(z, labels)
        except RuntimeError:  # the front closed under us: close() ran meanwhile
            self._check_open()
            raise

    def _front_for(self, kind: str) -> BatchingFront:
        """One front per output kind, made once under the lock however many threads ask first. The queue limit is
        shared: each front gets the whole limit, so at most two kinds' worth can wait (one for most exports)."""
        front = self._fronts.get(kind)
        if front is None:
            with self._lock:
                self._check_open()
                front = self._fronts.get(kind)
                if front is None:
                    front = BatchingFront(lambda zz, ll: self._run(zz, ll, kind), self.max_batch,
                                          **self._front_settings)
                    self._fronts[kind] = front
        return front

    @property
    def queued(self) -> int:
        """Images waiting in the batching fronts' queues (not counting the batches being computed)."""
        return sum(front.queued for front in list(self._fronts.values()))

    async def asample(self, n: int, seed: int, labels=None) -> np.ndarray:
        """The asyncio form of submit."""
        return await asyncio.wrap_future(self.submit(n, seed, labels))

    def close(self) -> None:
        """Finish the batches in flight and queued, then free the backend; calls after this raise SamplerError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True  # no new submissions
            fronts, self._fronts = list(self._fronts.values()), {}
        for front in fronts:
            front.close()  # drains: what was queued still runs on the live backend
        self._backend_closed = True
        self.backend.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SamplerError(f"this Sampler of {self.path} is closed; make a new one")

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- internals ------------------------------------------------------------------------------------------------

    def _run(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
        if self._backend_closed:
            self._check_open()
        native = kind if kind in self.backend.kinds else self.output_kind
        if len(z) <= self.max_batch:  # the common case: one backend call
            out = self.backend.run(z, labels, native)
        else:
            step = self.max_batch
            out = np.concatenate([self.backend.run(z[i:i + step], None if labels is None else labels[i:i + step],
                                                   native) for i in range(0, len(z), step)])
        if native != kind:  # a float-only export asked for uint8: convert here, as the uint8 graph would
            out = to_uint8(out, self.config["value_range"])
        return out

    def _check_n(self, n) -> int:
        if type(n) is int and 1 <= n <= self.max_images:  # the fast path of every call
            return n
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise SamplerError(f"n must be an integer, got {n!r}")
        if not 1 <= n <= self.max_images:
            raise SamplerError(f"n={n} is out of range; ask for 1 to {self.max_images} images per call")
        return int(n)

    def _check_z(self, z) -> np.ndarray:
        z = np.asarray(z)
        dim = self._dim
        if z.ndim != 2 or z.shape[1] != dim:
            raise SamplerError(f"z has shape {z.shape}; expected (n, {dim})")
        if z.dtype != np.float32:
            raise SamplerError(f"z has dtype {z.dtype}; expected float32 (z.astype(np.float32))")
        self._check_n(len(z))
        return np.ascontiguousarray(z)

    def check_labels(self, labels, n: int) -> np.ndarray | None:
        """labels as the backends take them (int64 (n,), or None); SamplerError naming the problem otherwise."""
        if labels is None and not self._classes:
            return None
        try:
            return check_labels(labels, n, self._classes)
        except LabelError as e:
            raise SamplerError(str(e)) from None


def _open_source(path: Path) -> Source:
    """An export folder (manifest and files checked) or a run / generator folder (torch only)."""
    from ..formats.manifest import load_export

    if (path / "manifest.json").is_file():
        manifest = load_export(path)
        return Source(path, manifest, manifest["generator"])
    if not path.exists():
        raise SamplerError(f"{path} does not exist; pass an export folder (exports/<name>) or a run folder")
    folder = generator_dir(path)
    if not (folder / "config.json").is_file():
        raise SamplerError(f"{path} is neither an export (manifest.json) nor a generator folder (config.json); "
                           f"pass exports/<name> or runs/<name>")
    return Source(path, None, read_config(folder))
