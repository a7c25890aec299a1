"""A batching front like Triton's dynamic batcher: concurrent requests are coalesced into one backend batch of up
to `max_batch` images, waiting at most `max_delay` seconds for company; a bounded queue refuses work when full
instead of growing without limit."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError


class Overloaded(UserError):
    """The batching queue is full: retry later, or raise max_queue."""


@dataclass
class _Request:
    z: np.ndarray  # (n, latent_dim)
    labels: np.ndarray | None
    future: Future = field(default_factory=Future)


class BatchingFront:
    def __init__(self, run, max_batch: int, max_delay: float = 0.0, max_queue: int = 4096, on_batch=None,
                 workers: int = 1):
        """`run(z, labels) -> images` computes one batch of at most max_batch images; max_queue counts images;
        `on_batch(images, requests)`, if given, hears the size of every batch run (for metrics); `workers` batches
        may run at once (Triton's instance count: worth 2 where one backend call leaves cores idle)."""
        self.run, self.max_batch, self.max_delay, self.max_queue = run, max_batch, max_delay, max_queue
        self.on_batch = on_batch
        self.pending: deque[_Request] = deque()
        self.queued = 0  # images waiting
        self.cond = threading.Condition()
        self.closed = False
        self.threads = [threading.Thread(target=self._loop, name=f"gandeploy-batcher-{k}", daemon=True)
                        for k in range(workers)]
        for thread in self.threads:
            thread.start()

    def submit(self, z: np.ndarray, labels: np.ndarray | None) -> Future:
        request = _Request(z, labels)
        with self.cond:
            if self.closed:
                raise RuntimeError("the sampler is closed")
            if self.queued + len(z) > self.max_queue:
                raise Overloaded(f"batching queue full ({self.queued} images waiting, limit {self.max_queue}); "
                                 f"retry later or raise max_queue")
            self.pending.append(request)
            self.queued += len(z)
            self.cond.notify()
        return request.future

    def _take(self) -> list[_Request]:
        """Wait for work, then gather requests until the batch is full or the delay since the first has passed."""
        with self.cond:
            while not self.pending and not self.closed:
                self.cond.wait()
            if not self.pending:
                return []
            deadline = time.monotonic() + self.max_delay
            while sum(len(r.z) for r in self.pending) < self.max_batch and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0 or not self.cond.wait(left):
                    break
            taken, size = [], 0
            while self.pending and (not taken or size + len(self.pending[0].z) <= self.max_batch):
                request = self.pending.popleft()
                taken.append(request)
                size += len(request.z)
            self.queued -= size
            return taken

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                return
            live = [r for r in taken if r.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                z = np.concatenate([r.z for r in live]) if len(live) > 1 else live[0].z
                labels = None if live[0].labels is None else np.concatenate([r.labels for r in live])
                if self.on_batch is not None:
                    self.on_batch(len(z), len(live))
                images = self.run(z, labels)
            except BaseException as e:  # every caller hears about it; the thread lives on
                for r in live:
                    r.future.set_exception(e)
                continue
            start = 0
            for r in live:
                r.future.set_result(images[start:start + len(r.z)])
                start += len(r.z)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        for thread in self.threads:
            thread.join()
