"""The service both protocols serve: one Sampler, its batching front (or, with batching off, runner threads), the
metrics, and the warm-up that makes it ready. Every generate request, from every connection and either protocol,
goes through `compute`, so the answer to given latents is the same bytes whatever else is in flight. It knows no
protocol: v1.py and oip.py read the requests and write the answers."""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..formats.manifest import load_manifest
from ..runtime import Overloaded, Sampler, SamplerError
from .http import RETRY_AFTER_S, Problem
from .metrics import Metrics

log = logging.getLogger("gandeploy.serve")


@dataclass
class ServeOptions:
    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int | None = None  # images per backend batch, at most the export's max; default: its opt, below
    max_delay_ms: float = 0.0  # 0: run whatever waits as soon as the backend is free (Triton's default)
    max_queue: int = 4096  # images waiting; beyond: 503 with Retry-After
    max_images_per_request: int | None = None  # default: 1024, or max_queue if smaller
    timeout_s: float = 30.0  # a request waiting longer gets 504
    batching: bool = True
    workers: int = 1  # batches computed at once (Triton's instance count)
    client_timeout_s: float = 10.0  # a request's headers, and then its body, must arrive within this
    host: str = "127.0.0.1"
    port: int = 8000


def resolved(export_dir: str | Path, options: ServeOptions) -> ServeOptions:
    """The options with their defaults filled in from the export; SamplerError for a pair that cannot work."""
    if options.max_images_per_request is None:
        options = replace(options, max_images_per_request=min(1024, options.max_queue))
    if options.max_images_per_request > options.max_queue:
        raise SamplerError(f"--max-images-per-request {options.max_images_per_request} is above --max-queue "
                           f"{options.max_queue}: such a request could never be queued; lower one or raise the "
                           f"other")
    if options.batch_size is None and (Path(export_dir) / "manifest.json").is_file():
        # opt, not max: on a 2-core CPU batches of 256 doubled p99 for no more images/s (bench/load_test.py)
        # the plain JSON: the Sampler checks the files' hashes, once
        options = replace(options, batch_size=load_manifest(export_dir)["batch"]["opt"])
    return options


class Service:
    def __init__(self, export_dir: str | Path, options: ServeOptions):
        self.options = options = resolved(export_dir, options)
        self.ready, self.failed, self.unbatched = False, None, 0
        self.sampler = Sampler(export_dir, backend=options.backend, device=options.device,
                               precision=options.precision, max_batch=options.batch_size,
                               max_images=options.max_images_per_request)
        self.sampler.batching(max_delay_ms=options.max_delay_ms, max_queue=options.max_queue,
                              workers=options.workers, on_batch=lambda *sizes: self.metrics.observe_batch(*sizes))
        try:  # one image before anything listens: an export that loads but cannot run is refused at start
            self.sampler.sample(1, seed=0, labels=self._zero_labels())
        except Exception as e:
            self.sampler.close()
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise SamplerError(f"{export_dir}: a first image on {self.sampler.info['backend']} failed "
                               f"({type(e).__name__}: {first[:200]}); the export is damaged or does not fit this "
                               f"backend: run `gandeploy verify {export_dir}`") from None
        self.metrics = Metrics(self.sampler.max_batch, lambda: self.queued, lambda: self.ready)
        # PNG encoding runs here instead of on the event loop; with batching off, requests run on `workers` threads
        self.pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="gandeploy-png")
        self.runners = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="gandeploy-run")

    @property
    def queued(self) -> int:
        return self.sampler.queued if self.options.batching else self.unbatched

    # ---- lifecycle ----------------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """One batch at the largest size and one request through the front: first-call costs are paid here."""
        try:
            n = min(self.sampler.max_batch, self.options.max_images_per_request)
            self.sampler.sample(n, seed=0, labels=self._zero_labels())
            if self.options.batching:
                self.sampler.submit(1, 0, self._zero_labels()).result()
            self.ready = True
        except Exception as e:  # the service stays up to say why on /readyz
            self.failed = f"warm-up failed: {type(e).__name__}: {e}"
            log.error(self.failed)

    def _zero_labels(self):
        return 0 if self.sampler.config["num_classes"] else None

    def close(self) -> None:
        self.ready = False
        self.runners.shutdown(wait=True)  # unbatched requests still queued finish on a live backend
        self.sampler.close()
        self.pool.shutdown(wait=True)

    # ---- requests -----------------------------------------------------------------------------------------------

    async def compute(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
        """Checked latents through the batching front (or, with batching off, one backend call on the runners):
        what both the v1 API and the Open Inference Protocol endpoint serve. Problem 503 when not ready or full,
        504 past the timeout."""
        if not self.ready:
            raise Problem(503, self.failed or "the model is warming up; retry in a second", retry_after=RETRY_AFTER_S)
        n = len(z)
        if self.options.batching:
            try:
                future = self.sampler.submit_latents(z, labels, kind)
            except Overloaded as e:
                raise Problem(503, str(e), retry_after=RETRY_AFTER_S) from None
        else:
            if self.unbatched + n > self.options.max_queue:
                raise Problem(503, f"queue full ({self.unbatched} images in flight, limit {self.options.max_queue}); "
                                   f"retry later or raise --max-queue", retry_after=RETRY_AFTER_S)
            self.unbatched += n
            future = self.runners.submit(self._unbatched, z, labels, kind)
        try:
            # on timeout the wrapper is cancelled, which cancels the request too if no batch has taken it yet
            return await asyncio.wait_for(asyncio.wrap_future(future), self.options.timeout_s)
        except asyncio.TimeoutError:
            raise Problem(504, f"no images within {self.options.timeout_s:g} s (a long queue or a stalled backend); "
                               f"retry, or start the server with a higher --timeout-s") from None
        finally:
            if not self.options.batching:
                self.unbatched -= n

    def _unbatched(self, z: np.ndarray, labels, kind: str) -> np.ndarray:
        self.metrics.observe_batch(len(z), 1)
        return self.sampler.run(z, labels, kind)
