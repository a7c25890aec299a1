"""The Open Inference Protocol (KServe v2, Triton's HTTP API) beside /v1/generate, with Triton's binary tensor
data extension (`Inference-Header-Content-Length`). Same model name and signature as the Triton repository
`gandeploy triton` writes: inputs `z` FP32 [-1, latent_dim] and, for conditional models, `label` INT64 [-1, 1]
(or [-1]); output `images` UINT8 [-1, h, w, c] (FP32 [-1, c, h, w] for float exports). Requests go through the
same batching front as /v1/generate. Errors answer {"error": "..."} with 400 (bad request), 404 (unknown model or
endpoint), 405 (wrong method), 503 (not ready, queue full), 504 and 500, as Triton does. Every field of a request is
checked by `parse` before anything runs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import __version__
from ..runtime import SamplerError
from .http import Problem, as_text, is_digits, json_object, read_body, shown, timed
from .service import Service

DATATYPES = {"FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8}
HEADER = "Inference-Header-Content-Length"
MAX_DIMS = 8  # no tensor here has more; a longer shape is a mistake, and it would be echoed in the error
MAX_BODY_BYTES = 4 * 1024 * 1024  # binary latents: 4 MB holds 10,000 latents of 100 floats


def answer(problem: Problem) -> Response:
    """The protocol's error: {"error": ...} alone, and 400 for a field the shared checks refused (422 in v1)."""
    status = 400 if problem.status == 422 else problem.status
    return Problem(status, problem.message, retry_after=problem.retry_after).response()


def tensors(sampler) -> tuple[list, list]:
    """The model's ([(name, numpy dtype, shape)] inputs, [...] outputs), the batch axis left out: the signature
    `gandeploy triton`'s repository declares, served here under /v2 and by `serve --engine triton`."""
    spec = sampler.config
    inputs = [("z", np.float32, (spec["latent_dim"],))]
    if spec["num_classes"]:
        inputs.append(("label", np.int64, (1,)))
    r, c = spec["resolution"], spec["channels"]
    image = ((r, r, c), np.uint8) if sampler.source.output_kind == "uint8" else ((c, r, r), np.float32)
    return inputs, [("images", image[1], image[0])]


def signature(service: Service) -> dict:
    """Model metadata: the Triton repository's signature for this export."""
    datatype = {np.float32: "FP32", np.int64: "INT64", np.uint8: "UINT8"}
    inputs, outputs = ([{"name": name, "datatype": datatype[dtype], "shape": [-1, *shape]}
                        for name, dtype, shape in group] for group in tensors(service.sampler))
    return {"name": model_name(service), "versions": ["1"], "platform": "gandeploy", "inputs": inputs,
            "outputs": outputs}


def model_name(service: Service) -> str:
    return (service.sampler.manifest or {}).get("name") or service.sampler.path.name


def routes(service: Service) -> list[Route]:
    def route(path: str, name: str, handler, methods=None) -> Route:
        return Route(path, timed(service.metrics, name, partial(handler, service), answer), methods=methods)

    model, versioned = "/v2/models/{model}", "/v2/models/{model}/versions/{version}"
    return [
        route("/v2/health/live", "v2_live", live),
        route("/v2/health/ready", "v2_ready", ready),
        route("/v2", "v2_server", server_metadata),
        route(model, "v2_model", model_metadata),
        route(versioned, "v2_model", model_metadata),
        route(f"{model}/ready", "v2_model_ready", model_ready),
        route(f"{versioned}/ready", "v2_model_ready", model_ready),
        route(f"{model}/infer", "v2_infer", infer, methods=["POST"]),
        route(f"{versioned}/infer", "v2_infer", infer, methods=["POST"]),
    ]


# ---- endpoints ------------------------------------------------------------------------------------------------------

def check_model(service: Service, request: Request) -> None:
    name, version = request.path_params["model"], request.path_params.get("version")
    if name != model_name(service) or version not in (None, "", "1"):
        asked = shown(name) + (f" version {shown(version)}" if version else "")
        raise Problem(404, f"unknown model {asked}; this server serves '{model_name(service)}' version 1")


async def live(service: Service, request: Request) -> Response:
    return Response(status_code=200)


async def ready(service: Service, request: Request) -> Response:
    return Response(status_code=200 if service.ready else 503)


async def server_metadata(service: Service, request: Request) -> Response:
    return JSONResponse({"name": "gandeploy", "version": __version__, "extensions": ["binary_tensor_data"]})


async def model_metadata(service: Service, request: Request) -> Response:
    check_model(service, request)
    return JSONResponse(signature(service))


async def model_ready(service: Service, request: Request) -> Response:
    check_model(service, request)
    return Response(status_code=200 if service.ready else 503)


async def infer(service: Service, request: Request) -> Response:
    check_model(service, request)
    body = await read_body(request, MAX_BODY_BYTES, service.options.client_timeout_s)
    ask = parse(body, request.headers.get(HEADER), service)
    images = await service.compute(ask.z, ask.labels, service.sampler.source.output_kind)
    service.metrics.images.inc(len(ask.z))
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise Problem(500, "the model produced NaN or infinity for these latents")
    return _answer(images, ask, service)


def _answer(images: np.ndarray, ask: Inference, service: Service) -> Response:
    """The inference response: the images as JSON numbers, or as binary tensor data after the JSON header."""
    out = signature(service)["outputs"][0]
    reply = {"model_name": model_name(service), "model_version": "1",
             "outputs": [{"name": "images", "datatype": out["datatype"], "shape": list(images.shape)}]}
    if ask.id is not None:
        reply["id"] = ask.id
    if not ask.binary:
        reply["outputs"][0]["data"] = images.ravel().tolist()
        return JSONResponse(reply)
    data = np.ascontiguousarray(images).tobytes()
    reply["outputs"][0]["parameters"] = {"binary_data_size": len(data)}
    head = json.dumps(reply, separators=(",", ":")).encode()
    return Response(head + data, media_type="application/octet-stream", headers={HEADER: str(len(head))})


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


# ---- the request ----------------------------------------------------------------------------------------------------

@dataclass
class Inference:
    """A checked inference request."""
    z: np.ndarray  # (n, latent_dim) float32
    labels: np.ndarray | None  # (n,) int64, for conditional models
    binary: bool  # images as binary tensor data after the JSON answer
    id: str | None  # echoed in the answer


def parse(body: bytes, header_length: str | None, service: Service) -> Inference:
    """The one check of an inference request: every field a client sends, before anything runs (an id that cannot
    be echoed back is refused here, not after the images are made)."""
    header, blobs = _split(body, header_length)
    z, labels = _inputs(header, blobs, service)
    binary = _binary_outputs(header)
    request_id = as_text(header["id"], "id") if header.get("id") is not None else None
    return Inference(z, labels, binary, request_id)


def _split(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON inference header and the binary tensor data after it (Triton's binary extension)."""
    if header_length is not None:
        if not is_digits(header_length) or int(header_length) > len(body):
            raise Problem(400, f"{HEADER} {shown(header_length)} is not a length within the body's {len(body)} "
                               f"bytes")
        head, blobs = body[:int(header_length)], body[int(header_length):]
    else:
        head, blobs = body, b""
    header = json_object(head, "the inference request header")
    if not isinstance(header.get("inputs"), list):
        raise Problem(400, "the inference request must be a JSON object with an 'inputs' list")
    return header, blobs


def _parameters(record: dict, owner: str) -> dict:
    params = record.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise Problem(400, f"the parameters of {owner} must be a JSON object, got {shown(params)}")
    return params


def _flag(params: dict, key: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise Problem(400, f"parameter {key} must be true or false, got {shown(value)}")
    return value


def _binary_outputs(header: dict) -> bool:
    """Whether the images go back as binary tensor data: the output's binary_data, else the request's
    binary_data_output."""
    default = _flag(_parameters(header, "the request"), "binary_data_output")
    outputs = [] if header.get("outputs") is None else header["outputs"]  # null: absent, as for parameters
    if not isinstance(outputs, list):
        raise Problem(400, f"outputs must be a list of requested outputs, got {shown(outputs)}")
    wanted = []
    for out in outputs:
        if not isinstance(out, dict):  # "images" alone is not {"name": "images"}
            raise Problem(400, f"a requested output must be a JSON object, got {shown(out)}")
        if out.get("name") != "images":
            raise Problem(400, f"unknown output {shown(out.get('name'))}; this model has 'images'")
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
        raise Problem(400, f"input '{name}' has datatype {shown(tensor.get('datatype'))}; expected {datatype}")
    shape = tensor.get("shape")
    sizes = isinstance(shape, list) and len(shape) <= MAX_DIMS and all(type(d) is int and 0 <= d < 2**63 for d in shape)
    if not sizes:
        raise Problem(400, f"input '{name}' has shape {shown(shape)}; expected a list of sizes")
    want = spec["shape"][1:]
    if name == "label" and shape[1:] not in ([1], []) or name == "z" and shape[1:] != want:
        raise Problem(400, f"input '{name}' has shape {shape}; expected [n, {', '.join(map(str, want))}]")
    dtype = DATATYPES[datatype]
    count = math.prod(shape)
    size = count * np.dtype(dtype).itemsize
    if size > max(len(blobs), 64 * 1024 * 1024):
        raise Problem(400, f"input '{name}' of shape {shape} is larger than any request this server takes")
    params = _parameters(tensor, f"input '{name}'")
    if "binary_data_size" in params:
        given = params["binary_data_size"]
        if type(given) is not int or given != size or offset + size > len(blobs):
            raise Problem(400, f"input '{name}': binary_data_size {shown(given)} does not fit shape {shape} of "
                               f"{datatype} in the body")
        return np.frombuffer(blobs, dtype=dtype, count=count, offset=offset).reshape(shape), offset + size
    return _json_tensor(tensor.get("data"), name, datatype, shape), offset


def _json_tensor(data, name: str, datatype: str, shape: list) -> np.ndarray:
    """A tensor's JSON `data` as an array of `shape`."""
    dtype = DATATYPES[datatype]
    integers = dtype is np.int64  # no 2.9 as label 2
    not_numbers = Problem(400, f"input '{name}': data is not {datatype} numbers")
    if not _numbers(data, {int} if integers else {int, float}):
        raise not_numbers
    try:
        raw = np.asarray(data)
        if raw.dtype.kind not in ("iu" if integers else "fiu"):  # object: an int past 64 bits
            raise TypeError(raw.dtype)
        array = raw.astype(dtype)
    except (ValueError, TypeError, OverflowError):  # ValueError: ragged lists
        raise not_numbers from None
    if array.size != math.prod(shape):
        raise Problem(400, f"input '{name}': {array.size} values for shape {shape}")
    return array.reshape(shape)


def _inputs(header: dict, blobs: bytes, service: Service) -> tuple[np.ndarray, np.ndarray | None]:
    """z (n, latent_dim) float32 and labels (n,) int64, checked against the signature; Problem 400 otherwise."""
    sig = {spec["name"]: spec for spec in signature(service)["inputs"]}
    arrays, offset = {}, 0
    for tensor in header["inputs"]:
        if not isinstance(tensor, dict):
            raise Problem(400, f"an input tensor must be a JSON object, got {shown(tensor)}")
        name = tensor.get("name")
        if not isinstance(name, str) or name not in sig:  # a list is no key: `in` would raise TypeError
            raise Problem(400, f"unknown input {shown(name)}; this model takes {', '.join(sig)}")
        if name in arrays:
            raise Problem(400, f"input '{name}' is given twice")
        arrays[name], offset = _tensor(tensor, sig[name], blobs, offset)
    missing = [name for name in sig if name not in arrays]
    if missing:
        raise Problem(400, f"input '{missing[0]}' is missing; this model takes {', '.join(sig)}")
    return _batch(arrays["z"], arrays.get("label"), service)


def _batch(z: np.ndarray, label: np.ndarray | None, service: Service) -> tuple[np.ndarray, np.ndarray | None]:
    """The batch's size within this server's limit, its rows agreeing, its latents finite and its labels valid."""
    n = len(z)
    limit = service.options.max_images_per_request
    if not 1 <= n <= limit:
        raise Problem(400, f"a batch of {n}: this server takes 1 to {limit} per request (--max-images-per-request)")
    labels = None
    if label is not None:
        labels = label.reshape(-1)
        if len(labels) != n:
            raise Problem(400, f"input 'label' has {len(labels)} rows for {n} rows of 'z'")
    if not np.isfinite(z).all():
        raise Problem(400, "input 'z' holds NaN or infinity")
    try:
        labels = service.sampler.check_labels(labels, n)
    except SamplerError as e:
        raise Problem(400, f"input 'label': {e}") from None
    return np.ascontiguousarray(z, dtype=np.float32), labels
