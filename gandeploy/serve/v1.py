"""The v1 API: /v1/generate (n images of a seed, by GET query or POST JSON, as PNG grid, npy or JSON of PNGs) and
/v1/model. Bad input answers 422 naming the field; the service answers 503 and 504."""

from __future__ import annotations

import asyncio
import base64
import io
from dataclasses import asdict, dataclass

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..formats.images import grid, png
from ..formats.vocabulary import seed_problem
from ..runtime import SamplerError
from .http import Problem, as_int, as_text, decimal, json_object, read_body, shown, timed
from .service import Service

FIELDS = ("n", "seed", "labels", "format", "scale")
MEDIA = {"png": "image/png", "npy": "application/x-npy", "json": "application/json"}
MAX_BODY_BYTES = 64 * 1024  # a generate request is a few fields; labels for 1,024 images fit many times over
EXAMPLE = "; send e.g. {\"n\": 4, \"seed\": 7, \"format\": \"png\"}"


@dataclass
class GenerateAsk:
    """A checked generate request."""
    n: int
    seed: int
    labels: np.ndarray | None
    format: str
    scale: int


def routes(service: Service) -> list[Route]:
    metrics = service.metrics

    async def generate(request: Request) -> Response:
        metrics.in_flight.inc()
        try:
            ask = parse(await params(request, service.options.client_timeout_s), service)
            z = service.sampler.latents(ask.n, ask.seed)
            response = await encode(await service.compute(z, ask.labels, "uint8"), ask, service)
            metrics.images.inc(ask.n)
            return response
        finally:
            metrics.in_flight.dec()

    async def model_info(request: Request) -> Response:
        return JSONResponse(model(service))

    return [Route("/v1/generate", timed(metrics, "generate", generate), methods=["GET", "POST"]),
            Route("/v1/model", timed(metrics, "model", model_info))]


async def params(request: Request, timeout: float) -> dict:
    """The request's fields: GET's query values as integers where they are, or POST's JSON object."""
    if request.method != "GET":
        return json_object(await read_body(request, MAX_BODY_BYTES, timeout), "the body", EXAMPLE)
    params = dict(request.query_params)
    for field in ("n", "seed", "scale"):  # query values are text
        if field in params:
            params[field] = decimal(params[field], field)
    if "labels" in params:  # '3' or '1,2,3', spaces after commas allowed, as the CLI's parse_labels does
        values = [decimal(v.strip(" "), "labels") for v in params["labels"].split(",")]
        params["labels"] = values[0] if len(values) == 1 else values
    return params


def parse(params: dict, service: Service) -> GenerateAsk:
    """The one check of a generate request: every field, before anything runs."""
    unknown = sorted(set(params) - set(FIELDS))
    if unknown:  # a key may hold anything, a lone surrogate included: shown escaped
        name = unknown[0].encode("utf-8", "backslashreplace").decode("utf-8")
        raise Problem(422, f"unknown field {shown(name)}; the fields are {', '.join(FIELDS)}", name)
    fmt = as_text(params.get("format", "png"), "format")
    n = as_int(params.get("n", 1), "n")
    seed = as_int(params.get("seed", 0), "seed")
    scale = as_int(params.get("scale", 1), "scale")
    limit = service.options.max_images_per_request
    if not 1 <= n <= limit:
        raise Problem(422, f"n={n} is outside 1..{limit}, this server's limit per request; split the request "
                           f"or start the server with a higher --max-images-per-request", "n")
    if seed_problem(seed) is not None:
        raise Problem(422, f"seed={seed} is outside 0..2**64-1", "seed")
    if not 1 <= scale <= 16:
        raise Problem(422, f"scale={scale} is outside 1..16 (pixels per image pixel in PNGs)", "scale")
    if fmt not in MEDIA:
        raise Problem(422, f"format {shown(fmt)} is not one of {', '.join(MEDIA)}", "format")
    try:
        labels = service.sampler.check_labels(_labels(params.get("labels")), n)
    except SamplerError as e:
        raise Problem(422, str(e), "labels") from None
    return GenerateAsk(n, seed, labels, fmt, scale)


def _labels(value):
    """None, one int or a flat list of ints, as JSON: numpy would take [true, 1] as labels [1, 1]."""
    if isinstance(value, list):
        return [as_int(v, "labels") for v in value]
    return None if value is None else as_int(value, "labels")


async def encode(images: np.ndarray, ask: GenerateAsk, service: Service) -> Response:
    """uint8 (n, h, w, c) images in the ask's format; PNGs are encoded on the service's pool, off the event loop."""
    headers = {"X-Gandeploy-Seed": str(ask.seed), "X-Gandeploy-Images": str(ask.n)}
    if ask.format == "npy":  # a memory copy: cheaper on the event loop than a hop to a thread
        body = io.BytesIO()
        np.save(body, images, allow_pickle=False)
        return Response(body.getvalue(), media_type=MEDIA["npy"], headers=headers)
    loop = asyncio.get_running_loop()
    if ask.format == "png":
        body = await loop.run_in_executor(service.pool, lambda: png(grid(images), ask.scale))
        return Response(body, media_type=MEDIA["png"], headers=headers)
    pngs = await loop.run_in_executor(service.pool, lambda: [png(x, ask.scale) for x in images])
    return JSONResponse({"n": ask.n, "seed": ask.seed, "shape": list(images.shape[1:]),
                         "images": [base64.b64encode(p).decode("ascii") for p in pngs]}, headers=headers)


def model(service: Service) -> dict:
    """The manifest's public part (no local paths) and how this server runs it."""
    m = service.sampler.manifest or {}
    public = {k: m[k] for k in ("name", "created", "generator", "inputs", "output", "batch", "opset") if k in m}
    public["parity"] = {k: v.get("passed") for k, v in m.get("parity", {}).items() if isinstance(v, dict)}
    public["engines"] = [{k: e[k] for k in ("file", "precision", "gpu", "compute_capability",
                                             "tensorrt_version") if k in e} for e in m.get("engines", [])]
    info, shared = service.sampler.info, ("backend", "device", "precision", "max_batch")
    public["serving"] = {**{k: info[k] for k in (*shared, "provider")},
                         **{k: v for k, v in asdict(service.options).items() if k not in (*shared, "host", "port")}}
    return public
