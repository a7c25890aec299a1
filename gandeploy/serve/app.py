"""The HTTP API over one Sampler. Every generate request, from every connection, goes through the Sampler's
batching front (or, with batching off, runs as its own backend call), so the answer to (n, seed, labels) is the
same bytes whatever else is in flight.

Starlette rather than FastAPI: six routes whose inputs the Sampler already validates do not need pydantic, and one
dependency less is one less thing to break in a production image; uvicorn with httptools and uvloop underneath.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import reprlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..formats.images import grid, png
from ..formats.manifest import load_manifest
from ..runtime import Overloaded, Sampler, SamplerError
from .metrics import Metrics

log = logging.getLogger("gandeploy.serve")

FIELDS = ("n", "seed", "labels", "format", "scale")
MEDIA = {"png": "image/png", "npy": "application/x-npy", "json": "application/json"}
RETRY_AFTER_S = 1
MAX_BODY_BYTES = 64 * 1024  # a generate request is a few fields; labels for 1,024 images fit many times over
MAX_DIGITS = 20  # 2**64 - 1, the largest seed, has 20; no field of either API needs more


@dataclass
class ServeOptions:
    backend: str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    max_batch: int | None = None  # images per backend batch; default: the batch the export was tuned for (opt)
    max_delay_ms: float = 0.0  # 0: run whatever waits as soon as the backend is free (Triton's default)
    max_queue: int = 4096  # images waiting; beyond: 503 with Retry-After
    max_images_per_request: int | None = None  # default: 1024, or max_queue if smaller
    timeout_s: float = 30.0  # a request waiting longer gets 504
    batching: bool = True
    workers: int = 1  # batches computed at once (Triton's instance count)
    client_timeout_s: float = 10.0  # a request's headers, and then its body, must arrive within this
    host: str = "127.0.0.1"
    port: int = 8000


class Problem(Exception):
    """An HTTP error answer: one line naming the problem (and the field, for bad input) and the fix."""

    def __init__(self, status: int, message: str, field: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.retry_after = status, message, field, retry_after

    def response(self) -> Response:
        body = {"error": self.message} if self.field is None else {"error": self.message, "field": self.field}
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return JSONResponse(body, status_code=self.status, headers=headers)


# ---- fields: every value a client sends (v1 and v2) is read through these ------------------------------------------

_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother = 3, 40, 40


def shown(value) -> str:
    """A client's value inside an error message: one short line whatever was sent. reprlib bounds the length and the
    nesting; repr escapes newlines and the lone surrogates that UTF-8 cannot encode."""
    return _SHOWN.repr(value)


def is_digits(text: str) -> bool:
    """ASCII digits, at most MAX_DIGITS: str.isdigit() alone is true for '²', which int() refuses, and int() alone
    takes '٣', ' 3' and '1_0', and spends time on thousands of digits before refusing them past 4,300."""
    return 0 < len(text) <= MAX_DIGITS and text.isascii() and text.isdigit()


def decimal(text: str, field: str) -> int:
    """An integer written as text (a query value, a header): ASCII digits with an optional '-'."""
    if not is_digits(text[1:] if text.startswith("-") else text):
        raise Problem(422, f"{field}: {shown(text)} is not an integer (ASCII digits, at most {MAX_DIGITS})", field)
    return int(text)


def as_int(value, field: str) -> int:
    """A JSON integer: JSON true is not 1 (bool is an int in Python), 2.0 is not 2, and no field needs 21 digits."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) >= 10**MAX_DIGITS:
        raise Problem(422, f"{field}: {shown(value)} is not an integer", field)
    return value


def as_text(value, field: str) -> str:
    """A JSON string that can be sent back: "\\udc80" is valid JSON but decodes to a lone surrogate, and the answer
    echoing it would fail to encode after the work was done."""
    if not isinstance(value, str):
        raise Problem(422, f"{field} must be a string, got {shown(value)}", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Problem(422, f"{field}: {shown(value)} holds a lone surrogate, not Unicode text", field) from None
    return value


def _labels(value):
    """None, one int or a flat list of ints, as JSON: numpy would take [true, 1] as labels [1, 1]."""
    if isinstance(value, list):
        return [as_int(v, "labels") for v in value]
    return None if value is None else as_int(value, "labels")


@dataclass
class Ask:
    n: int
    seed: int
    labels: np.ndarray | None
    format: str
    scale: int


class Service:
    def __init__(self, export_dir: str | Path, options: ServeOptions):
        if options.max_images_per_request is None:
            options = replace(options, max_images_per_request=min(1024, options.max_queue))
        if options.max_images_per_request > options.max_queue:
            raise SamplerError(f"--max-images-per-request {options.max_images_per_request} is above --max-queue "
                               f"{options.max_queue}: such a request could never be queued; lower one or raise the "
                               f"other")
        if options.max_batch is None and (Path(export_dir) / "manifest.json").is_file():
            # opt, not max: on a 2-core CPU batches of 256 doubled p99 for no more images/s (bench/load_test.py)
            # the plain JSON: the Sampler checks the files' hashes, once
            options = replace(options, max_batch=load_manifest(export_dir)["batch"]["opt"])
        self.options = options
        self.ready, self.failed, self.unbatched = False, None, 0
        self.sampler = Sampler(export_dir, backend=options.backend, device=options.device,
                               precision=options.precision, max_batch=options.max_batch,
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

    def parse(self, params: dict) -> Ask:
        unknown = sorted(set(params) - set(FIELDS))
        if unknown:  # a key may hold anything, a lone surrogate included: shown escaped
            name = unknown[0].encode("utf-8", "backslashreplace").decode("utf-8")
            raise Problem(422, f"unknown field {shown(name)}; the fields are {', '.join(FIELDS)}", name)
        fmt = as_text(params.get("format", "png"), "format")
        n = as_int(params.get("n", 1), "n")
        seed = as_int(params.get("seed", 0), "seed")
        scale = as_int(params.get("scale", 1), "scale")
        limit = self.options.max_images_per_request
        if not 1 <= n <= limit:
            raise Problem(422, f"n={n} is outside 1..{limit}, this server's limit per request; split the request "
                               f"or start the server with a higher --max-images-per-request", "n")
        if not 0 <= seed < 2**64:
            raise Problem(422, f"seed={seed} is outside 0..2**64-1", "seed")
        if not 1 <= scale <= 16:
            raise Problem(422, f"scale={scale} is outside 1..16 (pixels per image pixel in PNGs)", "scale")
        if fmt not in MEDIA:
            raise Problem(422, f"format {shown(fmt)} is not one of {', '.join(MEDIA)}", "format")
        try:
            labels = self.sampler.check_labels(_labels(params.get("labels")), n)
        except SamplerError as e:
            raise Problem(422, str(e), "labels") from None
        return Ask(n, seed, labels, fmt, scale)

    async def images(self, ask: Ask) -> np.ndarray:
        """uint8 images 0..n-1 of the ask's seed."""
        return await self.compute(self.sampler.latents(ask.n, ask.seed), ask.labels, "uint8")

    async def compute(self, z: np.ndarray, labels: np.ndarray | None, kind: str) -> np.ndarray:
        """Checked latents through the batching front (or, with batching off, one backend call on the runners):
        what both the v1 API and the Open Inference Protocol endpoint serve."""
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
        return self.sampler._run(z, labels, kind)

    async def encode(self, images: np.ndarray, ask: Ask) -> Response:
        headers = {"X-Gandeploy-Seed": str(ask.seed), "X-Gandeploy-Images": str(ask.n)}
        if ask.format == "npy":  # a memory copy: cheaper on the event loop than a hop to a thread
            body = io.BytesIO()
            np.save(body, images, allow_pickle=False)
            return Response(body.getvalue(), media_type=MEDIA["npy"], headers=headers)
        loop = asyncio.get_running_loop()
        if ask.format == "png":
            body = await loop.run_in_executor(self.pool, lambda: png(grid(images), ask.scale))
            return Response(body, media_type=MEDIA["png"], headers=headers)
        pngs = await loop.run_in_executor(self.pool, lambda: [png(x, ask.scale) for x in images])
        return JSONResponse({"n": ask.n, "seed": ask.seed, "shape": list(images.shape[1:]),
                             "images": [base64.b64encode(p).decode("ascii") for p in pngs]}, headers=headers)

    def model(self) -> dict:
        """The manifest's public part (no local paths) and how this server runs it."""
        m = self.sampler.manifest or {}
        public = {k: m[k] for k in ("name", "created", "generator", "inputs", "output", "batch", "opset") if k in m}
        public["parity"] = {k: v.get("passed") for k, v in m.get("parity", {}).items() if isinstance(v, dict)}
        public["engines"] = [{k: e[k] for k in ("file", "precision", "gpu", "compute_capability",
                                                 "tensorrt_version") if k in e} for e in m.get("engines", [])]
        info = self.sampler.info
        public["serving"] = {**{k: info[k] for k in ("backend", "device", "precision", "max_batch", "provider")},
                             **{k: v for k, v in asdict(self.options).items() if k not in ("host", "port", "backend",
                                                                                          "device", "precision",
                                                                                          "max_batch")}}
        return public


async def _params(request: Request, timeout: float) -> dict:
    if request.method == "GET":
        params = dict(request.query_params)
        for field in ("n", "seed", "scale"):  # query values are text
            if field in params:
                params[field] = decimal(params[field], field)
        if "labels" in params:  # '3' or '1,2,3', spaces after commas allowed, as the CLI's parse_labels does
            values = [decimal(v.strip(" "), "labels") for v in params["labels"].split(",")]
            params["labels"] = values[0] if len(values) == 1 else values
        return params
    declared = request.headers.get("content-length", "")
    if is_digits(declared) and int(declared) > MAX_BODY_BYTES:  # refused before a byte of it is read
        raise Problem(413, f"the body is {int(declared)} bytes; a generate request is a small JSON object (at most "
                           f"{MAX_BODY_BYTES} bytes)", "body")
    body = bytearray()

    async def read():
        async for chunk in request.stream():  # bodies without a length are capped while they stream in
            body.extend(chunk)
            if len(body) > MAX_BODY_BYTES:
                raise Problem(413, f"the body is over {MAX_BODY_BYTES} bytes; a generate request is a small JSON "
                                   f"object", "body")

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:  # a client trickling its body holds a connection and a task: let it go
        raise Problem(408, f"the body did not arrive within {timeout:g} s", "body") from None
    try:
        params = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than any request needs
        raise Problem(422, "the body is not JSON; send e.g. {\"n\": 4, \"seed\": 7, \"format\": \"png\"}",
                      "body") from None
    if not isinstance(params, dict):
        raise Problem(422, f"the body must be a JSON object, got {type(params).__name__}", "body")
    return params


def create_app(export_dir: str | Path, options: ServeOptions | None = None) -> Starlette:
    """Load the export (bad input fails here, before anything listens) and build the ASGI app."""
    service = Service(export_dir, options or ServeOptions())
    metrics = service.metrics

    async def generate(request: Request) -> Response:
        start = time.perf_counter()
        metrics.in_flight.inc()
        try:
            ask = service.parse(await _params(request, service.options.client_timeout_s))
            response = await service.encode(await service.images(ask), ask)
            metrics.images.inc(ask.n)
        except Problem as p:
            response = p.response()
        except ClientDisconnect:  # the client left mid-request: nobody to answer, nothing to trace
            log.warning("a client disconnected before its request was read")
            response = Response(status_code=499)
        except Exception as e:  # one line to the client, the traceback to the log; the service lives on
            log.exception("generate failed")
            response = Problem(500, f"generation failed: {type(e).__name__}: {e}").response()
        finally:
            metrics.in_flight.dec()
        metrics.observe("generate", response.status_code, time.perf_counter() - start)
        return response

    def endpoint(name: str, answer):
        async def handler(request: Request) -> Response:
            start = time.perf_counter()
            response = answer()
            metrics.observe(name, response.status_code, time.perf_counter() - start)
            return response
        return handler

    def readyz() -> Response:
        if service.ready:
            return JSONResponse({"status": "ready", "backend": service.sampler.info["backend"]})
        return JSONResponse({"status": service.failed or "warming up"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=service.warm_up, name="gandeploy-warm-up", daemon=True).start()
        yield
        service.close()

    from .oip import http_error, routes as oip_routes

    routes = [
        *oip_routes(service),
        Route("/v1/generate", generate, methods=["GET", "POST"]),
        Route("/v1/model", endpoint("model", lambda: JSONResponse(service.model()))),
        Route("/healthz", endpoint("healthz", lambda: JSONResponse({"status": "alive"}))),
        Route("/readyz", endpoint("readyz", readyz)),
        Route("/metrics", lambda request: Response(metrics.text(), media_type=metrics.content_type)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error})
    app.state.service = service
    return app
