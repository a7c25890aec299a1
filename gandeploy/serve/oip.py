"""The Open Inference Protocol (KServe v2, Triton's HTTP API) beside /v1/generate, with Triton's binary tensor
data extension (`Inference-Header-Content-Length`). Same model name and signature as the Triton repository
`gandeploy triton` writes: inputs `z` FP32 [-1, latent_dim] and, for conditional models, `label` INT64 [-1, 1]
(or [-1]); output `images` UINT8 [-1, h, w, c] (FP32 [-1, c, h, w] for float exports). Requests go through the
same batching front as /v1/generate. Errors answer {"error": "..."} with 400 (bad request), 404 (unknown model or
endpoint), 405 (wrong method), 503 (not ready, queue full), 504 and 500, as Triton does. Every field of a request is
checked by `parse` before anything runs."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import __version__
from ..runtime import SamplerError
from .app import MAX_BODY_BYTES, Problem, as_text, is_digits, shown

log = logging.getLogger("gandeploy.serve")
DATATYPES = {"FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8}
HEADER = "Inference-Header-Content-Length"
MAX_DIMS = 8  # no tensor here has more; a longer shape is a mistake, and it would be echoed in the error


class ProtocolError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _error(status: int, message: str, retry_after: int | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"Retry-After": str(retry_after)} if retry_after else None)


def signature(service) -> dict:
    """Model metadata: the Triton repository's signature for this export."""
    m, g = service.sampler.manifest or {}, service.sampler.config
    inputs = [{"name": "z", "datatype": "FP32", "shape": [-1, g["latent_dim"]]}]
    if g["num_classes"]:
        inputs.append({"name": "label", "datatype": "INT64", "shape": [-1, 1]})
    kind = service.sampler.source.output_kind
    shape = m.get("output", {}).get("shape") or [-1, g["channels"], g["resolution"], g["resolution"]]
    output = {"name": "images", "datatype": "UINT8" if kind == "uint8" else "FP32", "shape": [-1, *shape[1:]]}
    return {"name": model_name(service), "versions": ["1"], "platform": "gandeploy", "inputs": inputs,
            "outputs": [output]}


def model_name(service) -> str:
    return (service.sampler.manifest or {}).get("name") or service.sampler.path.name


def routes(service) -> list[Route]:
    metrics = service.metrics

    def check_model(request: Request) -> None:
        name, version = request.path_params["model"], request.path_params.get("version")
        if name != model_name(service) or version not in (None, "", "1"):
            asked = shown(name) + (f" version {shown(version)}" if version else "")
            raise ProtocolError(404, f"unknown model {asked}; this server serves '{model_name(service)}' version 1")

    def timed(name: str, handler):
        async def wrapped(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except ProtocolError as e:
                response = _error(e.status, e.message)
            except Problem as p:  # a field the shared checks refused (422 in v1), or the batching front's answer
                response = _error(400 if p.status == 422 else p.status, p.message, p.retry_after)
            except Exception as e:  # one line to the client, the traceback to the log; the service lives on
                log.exception("v2 %s failed", name)
                response = _error(500, f"inference failed: {type(e).__name__}: {e}")
            metrics.observe(name, response.status_code, time.perf_counter() - start)
            return response
        return wrapped

    async def live(request):
        return Response(status_code=200)

    async def ready(request):
        return Response(status_code=200 if service.ready else 503)

    async def server_metadata(request):
        return JSONResponse({"name": "gandeploy", "version": __version__, "extensions": ["binary_tensor_data"]})

    async def model_metadata(request):
        check_model(request)
        return JSONResponse(signature(service))

    async def model_ready(request):
        check_model(request)
        return Response(status_code=200 if service.ready else 503)

    async def infer(request: Request) -> Response:
        check_model(request)
        try:
            body = await _body(request, service.options.client_timeout_s)
        except ClientDisconnect:
            return Response(status_code=499)
        ask = parse(body, request.headers.get(HEADER), service)
        images = await service.compute(ask.z, ask.labels, service.sampler.source.output_kind)
        metrics.images.inc(len(ask.z))
        out = signature(service)["outputs"][0]
        answer = {"model_name": model_name(service), "model_version": "1",
                  "outputs": [{"name": "images", "datatype": out["datatype"], "shape": list(images.shape)}]}
        if ask.id is not None:
            answer["id"] = ask.id
        if images.dtype.kind == "f" and not np.isfinite(images).all():
            raise ProtocolError(500, "the model produced NaN or infinity for these latents")
        if not ask.binary:
            answer["outputs"][0]["data"] = images.ravel().tolist()
            return JSONResponse(answer)
        data = np.ascontiguousarray(images).tobytes()
        answer["outputs"][0]["parameters"] = {"binary_data_size": len(data)}
        head = json.dumps(answer, separators=(",", ":")).encode()
        return Response(head + data, media_type="application/octet-stream", headers={HEADER: str(len(head))})

    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    return [
        Route("/v2/health/live", timed("v2_live", live)),
        Route("/v2/health/ready", timed("v2_ready", ready)),
        Route("/v2", timed("v2_server", server_metadata)),
        Route(model, timed("v2_model", model_metadata)),
        Route(versioned, timed("v2_model", model_metadata)),
        Route(f"{model}/ready", timed("v2_model_ready", model_ready)),
        Route(f"{versioned}/ready", timed("v2_model_ready", model_ready)),
        Route(f"{model}/infer", timed("v2_infer", infer), methods=["POST"]),
        Route(f"{versioned}/infer", timed("v2_infer", infer), methods=["POST"]),
    ]


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Starlette's own 404 (no route) and 405 (wrong method): the protocol's {"error": ...} under /v2, as Triton
    answers, so a client reads every /v2 error the same way; Starlette's plain text elsewhere, as before."""
    path = request.scope["path"]
    if path != "/v2" and not path.startswith("/v2/"):
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)
    if exc.status_code == 404:
        message = f"no endpoint {shown(path)}; this server has /v2, /v2/health/live, /v2/health/ready and " \
                  f"/v2/models/NAME[/versions/1][/ready|/infer]"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "another method")
        message = f"{shown(request.method)} is not allowed on {shown(path)}; use {allowed}"
    else:
        message = exc.detail
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


@dataclass
class Inference:
    """A checked inference request."""
    z: np.ndarray  # (n, latent_dim) float32
    labels: np.ndarray | None  # (n,) int64, for conditional models
    binary: bool  # images as binary tensor data after the JSON answer
    id: str | None  # echoed in the answer


def parse(body: bytes, header_length: str | None, service) -> Inference:
    """The one check of an inference request: every field a client sends, before anything runs (an id that cannot
    be echoed back is refused here, not after the images are made)."""
    header, blobs = _split(body, header_length)
    z, labels = _inputs(header, blobs, service)
    binary = _binary_outputs(header)
    request_id = as_text(header["id"], "id") if header.get("id") is not None else None
    return Inference(z, labels, binary, request_id)


async def _body(request: Request, timeout: float) -> bytes:
    import asyncio

    limit = 64 * MAX_BODY_BYTES  # binary latents: 4 MB holds 10,000 latents of 100 floats
    declared = request.headers.get("content-length", "")
    if is_digits(declared) and int(declared) > limit:
        raise ProtocolError(413, f"the body is {int(declared)} bytes, over this server's {limit}")
    body = bytearray()

    async def read():
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise ProtocolError(413, f"the body is over this server's {limit} bytes")

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise ProtocolError(408, f"the body did not arrive within {timeout:g} s") from None
    return bytes(body)


def _split(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON inference header and the binary tensor data after it (Triton's binary extension)."""
    if header_length is not None:
        if not is_digits(header_length) or int(header_length) > len(body):
            raise ProtocolError(400, f"{HEADER} {shown(header_length)} is not a length within the body's "
                                     f"{len(body)} bytes")
        head, blobs = body[:int(header_length)], body[int(header_length):]
    else:
        head, blobs = body, b""
    try:
        header = json.loads(head)
    except (ValueError, RecursionError):
        raise ProtocolError(400, "the inference request header is not JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise ProtocolError(400, "the inference request must be a JSON object with an 'inputs' list")
    return header, blobs


def _parameters(record: dict, owner: str) -> dict:
    params = record.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise ProtocolError(400, f"the parameters of {owner} must be a JSON object, got {shown(params)}")
    return params


def _flag(params: dict, key: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise ProtocolError(400, f"parameter {key} must be true or false, got {shown(value)}")
    return value


def _binary_outputs(header: dict) -> bool:
    """Whether the images go back as binary tensor data: the output's binary_data, else the request's
    binary_data_output."""
    default = _flag(_parameters(header, "the request"), "binary_data_output")
    outputs = [] if header.get("outputs") is None else header["outputs"]  # null: absent, as for parameters
    if not isinstance(outputs, list):
        raise ProtocolError(400, f"outputs must be a list of requested outputs, got {shown(outputs)}")
    wanted = []
    for out in outputs:
        if not isinstance(out, dict):  # "images" alone is not {"name": "images"}
            raise ProtocolError(400, f"a requested output must be a JSON object, got {shown(out)}")
        if out.get("name") != "images":
            raise ProtocolError(400, f"unknown output {shown(out.get('name'))}; this model has 'images'")
        wanted.append(_flag(_parameters(out, "output 'images'"), "binary_data"))
    return next((w for w in wanted if w is not None), bool(default))


def _numbers(data, kinds: set) -> bool:
    """Whether data is a (nested) list of numbers of these JSON kinds. type(), not isinstance: bool is an int in
    Python, and numpy would take JSON true as 1."""
    stack = [data]
    while stack:  # a loop, not recursion: a client chooses the nesting
        item = stack.pop()
        if type(item) is not list:
            if type(item) not in kinds:
                return False
            continue
        types = set(map(type, item))  # a flat list in one pass in C: this runs on the event loop
        if list in types:
            stack.extend(item)
        elif not types <= kinds:
            return False
    return True


def _tensor(tensor: dict, spec: dict, blobs: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor checked against its signature; and where the next binary tensor starts."""
    name, datatype = spec["name"], spec["datatype"]
    if tensor.get("datatype") != datatype:
        raise ProtocolError(400, f"input '{name}' has datatype {shown(tensor.get('datatype'))}; expected {datatype}")
    shape = tensor.get("shape")
    sizes = isinstance(shape, list) and len(shape) <= MAX_DIMS and all(type(d) is int and 0 <= d < 2**63 for d in shape)
    if not sizes:
        raise ProtocolError(400, f"input '{name}' has shape {shown(shape)}; expected a list of sizes")
    want = spec["shape"][1:]
    if name == "label" and shape[1:] not in ([1], []) or name == "z" and shape[1:] != want:
        raise ProtocolError(400, f"input '{name}' has shape {shape}; expected [n, {', '.join(map(str, want))}]")
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    size = count * np.dtype(dtype).itemsize
    if size > max(len(blobs), 64 * 1024 * 1024):
        raise ProtocolError(400, f"input '{name}' of shape {shape} is larger than any request this server takes")
    params = _parameters(tensor, f"input '{name}'")
    if "binary_data_size" in params:
        given = params["binary_data_size"]
        if type(given) is not int or given != size or offset + size > len(blobs):
            raise ProtocolError(400, f"input '{name}': binary_data_size {shown(given)} does not fit shape {shape} "
                                     f"of {datatype} in the body")
        return np.frombuffer(blobs, dtype=dtype, count=count, offset=offset).reshape(shape), offset + size
    data, integers = tensor.get("data"), dtype is np.int64  # no 2.9 as label 2
    not_numbers = ProtocolError(400, f"input '{name}': data is not {datatype} numbers")
    if not _numbers(data, {int} if integers else {int, float}):
        raise not_numbers
    try:
        raw = np.asarray(data)
        if raw.dtype.kind not in ("iu" if integers else "fiu"):  # object: an int past 64 bits
            raise TypeError(raw.dtype)
        array = raw.astype(dtype)
    except (ValueError, TypeError, OverflowError):  # ValueError: ragged lists
        raise not_numbers from None
    if array.size != count:
        raise ProtocolError(400, f"input '{name}': {array.size} values for shape {shape}")
    return array.reshape(shape), offset


def _inputs(header: dict, blobs: bytes, service) -> tuple[np.ndarray, np.ndarray | None]:
    """z (n, latent_dim) float32 and labels (n,) int64, checked against the signature; ProtocolError otherwise."""
    sig = {spec["name"]: spec for spec in signature(service)["inputs"]}
    arrays, offset = {}, 0
    for tensor in header["inputs"]:
        if not isinstance(tensor, dict):
            raise ProtocolError(400, f"an input tensor must be a JSON object, got {shown(tensor)}")
        name = tensor.get("name")
        if not isinstance(name, str) or name not in sig:  # a list is no key: `in` would raise TypeError
            raise ProtocolError(400, f"unknown input {shown(name)}; this model takes {', '.join(sig)}")
        if name in arrays:
            raise ProtocolError(400, f"input '{name}' is given twice")
        arrays[name], offset = _tensor(tensor, sig[name], blobs, offset)
    missing = [name for name in sig if name not in arrays]
    if missing:
        raise ProtocolError(400, f"input '{missing[0]}' is missing; this model takes {', '.join(sig)}")
    z = arrays["z"]
    n = len(z)
    limit = service.options.max_images_per_request
    if not 1 <= n <= limit:
        raise ProtocolError(400, f"a batch of {n}: this server takes 1 to {limit} per request "
                                 f"(--max-images-per-request)")
    labels = None
    if "label" in arrays:
        labels = arrays["label"].reshape(-1)
        if len(labels) != n:
            raise ProtocolError(400, f"input 'label' has {len(labels)} rows for {n} rows of 'z'")
    if not np.isfinite(z).all():
        raise ProtocolError(400, "input 'z' holds NaN or infinity")
    try:
        labels = service.sampler.check_labels(labels, n)
    except SamplerError as e:
        raise ProtocolError(400, f"input 'label': {e}") from None
    return np.ascontiguousarray(z, dtype=np.float32), labels
