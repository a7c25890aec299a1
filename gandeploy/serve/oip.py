"""The Open Inference Protocol (KServe v2, Triton's HTTP API) beside /v1/generate, with Triton's binary tensor
data extension (`Inference-Header-Content-Length`). Same model name and signature as the Triton repository
`gandeploy triton` writes: inputs `z` FP32 [-1, latent_dim] and, for conditional models, `label` INT64 [-1, 1]
(or [-1]); output `images` UINT8 [-1, h, w, c] (FP32 [-1, c, h, w] for float exports). Requests go through the
same batching front as /v1/generate. Errors answer {"error": "..."} with 400 (bad request), 404 (unknown model),
503 (not ready, queue full), 504 and 500, as Triton does."""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..runtime import SamplerError

log = logging.getLogger("gandeploy.serve")
DATATYPES = {"FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8}
HEADER = "Inference-Header-Content-Length"


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
            raise ProtocolError(404, f"unknown model '{name}'" + (f" version {version}" if version else "") +
                                f"; this server serves '{model_name(service)}' version 1")

    def timed(name: str, handler):
        async def wrapped(request: Request) -> Response:
            start = time.perf_counter()
            try:
                response = await handler(request)
            except ProtocolError as e:
                response = _error(e.status, e.message)
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
        header, blobs = _split(body, request.headers.get(HEADER))
        z, labels, n = _inputs(header, blobs, service)
        want_binary = _binary_outputs(header)
        from .app import Problem

        try:
            images = await service.compute(z, labels, service.sampler.source.output_kind)
        except Problem as p:
            return _error(400 if p.status == 422 else p.status, p.message, p.retry_after)
        metrics.images.inc(n)
        out = signature(service)["outputs"][0]
        answer = {"model_name": model_name(service), "model_version": "1",
                  "outputs": [{"name": "images", "datatype": out["datatype"], "shape": list(images.shape)}]}
        if "id" in header:
            answer["id"] = str(header["id"])
        if images.dtype.kind == "f" and not np.isfinite(images).all():
            raise ProtocolError(500, "the model produced NaN or infinity for these latents")
        if not want_binary:
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


async def _body(request: Request, timeout: float) -> bytes:
    import asyncio

    from .app import MAX_BODY_BYTES, Problem

    limit = 64 * MAX_BODY_BYTES  # binary latents: 4 MB holds 10,000 latents of 100 floats
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
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
    except Problem as p:  # pragma: no cover - read() raises ProtocolError only
        raise ProtocolError(p.status, p.message) from None
    return bytes(body)


def _split(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON inference header and the binary tensor data after it (Triton's binary extension)."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ProtocolError(400, f"{HEADER} {header_length!r} does not fit a body of {len(body)} bytes")
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


def _binary_outputs(header: dict) -> bool:
    params = header.get("parameters") if isinstance(header.get("parameters"), dict) else {}
    outputs = header.get("outputs") if isinstance(header.get("outputs"), list) else []
    for out in outputs:
        if not isinstance(out, dict) or out.get("name") != "images":
            raise ProtocolError(400, f"unknown output {out.get('name') if isinstance(out, dict) else out!r}; "
                                     f"this model has 'images'")
        if isinstance(out.get("parameters"), dict) and "binary_data" in out["parameters"]:
            return bool(out["parameters"]["binary_data"])
    return bool(params.get("binary_data_output", False))


def _inputs(header: dict, blobs: bytes, service) -> tuple[np.ndarray, np.ndarray | None, int]:
    """z (n, latent_dim) float32 and labels (n,) int64, checked against the signature; ProtocolError otherwise."""
    sig = {spec["name"]: spec for spec in signature(service)["inputs"]}
    arrays, offset = {}, 0
    for tensor in header["inputs"]:
        if not isinstance(tensor, dict) or tensor.get("name") not in sig:
            name = tensor.get("name") if isinstance(tensor, dict) else tensor
            raise ProtocolError(400, f"unknown input {name!r}; this model takes {', '.join(sig)}")
        name, spec = tensor["name"], sig[tensor["name"]]
        if name in arrays:
            raise ProtocolError(400, f"input '{name}' is given twice")
        if tensor.get("datatype") != spec["datatype"]:
            raise ProtocolError(400, f"input '{name}' has datatype {tensor.get('datatype')!r}; expected "
                                     f"{spec['datatype']}")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise ProtocolError(400, f"input '{name}' has shape {shape!r}; expected a list of sizes")
        want = spec["shape"][1:]
        if name == "label" and shape[1:] not in ([1], []) or name == "z" and shape[1:] != want:
            raise ProtocolError(400, f"input '{name}' has shape {shape}; expected [n, {', '.join(map(str, want))}]")
        dtype, count = DATATYPES[spec["datatype"]], math.prod(shape)
        if count * np.dtype(dtype).itemsize > max(len(blobs), 64 * 1024 * 1024):
            raise ProtocolError(400, f"input '{name}' of shape {shape} is larger than any request this server takes")
        params = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
        if "binary_data_size" in params:
            size = params["binary_data_size"]
            if not isinstance(size, int) or size != count * np.dtype(dtype).itemsize or offset + size > len(blobs):
                raise ProtocolError(400, f"input '{name}': binary_data_size {size!r} does not fit shape {shape} of "
                                         f"{spec['datatype']} in the body")
            arrays[name] = np.frombuffer(blobs, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += size
        else:
            data = tensor.get("data")
            try:
                raw = np.asarray(data)
                if raw.dtype.kind not in ("fiu" if dtype is np.float32 else "iu"):  # no strings, no 2.9 as label 2
                    raise TypeError(raw.dtype)
                array = raw.astype(dtype)
            except (ValueError, TypeError, OverflowError):
                raise ProtocolError(400, f"input '{name}': data is not {spec['datatype']} numbers") from None
            if array.size != count:
                raise ProtocolError(400, f"input '{name}': {array.size} values for shape {shape}")
            arrays[name] = array.reshape(shape)
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
    return np.ascontiguousarray(z, dtype=np.float32), labels, n
