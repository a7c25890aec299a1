"""What both protocols (v1 and the Open Inference Protocol) share: the one error answer, the one body reader with its
limits, the one timing wrapper of endpoints, and the checks every value a client sends is read through."""

from __future__ import annotations

import asyncio
import json
import logging
import reprlib
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("gandeploy.serve")

RETRY_AFTER_S = 1
MAX_DIGITS = 20  # 2**64 - 1, the largest seed, has 20; no field of either API needs more


class Problem(Exception):
    """An HTTP error answer: one line naming the problem (and the field, for bad input) and the fix."""

    def __init__(self, status: int, message: str, field: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.retry_after = status, message, field, retry_after

    def response(self) -> Response:
        body = {"error": self.message} if self.field is None else {"error": self.message, "field": self.field}
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after else None
        return JSONResponse(body, status_code=self.status, headers=headers)


def timed(metrics, name: str, handler, answer=Problem.response):
    """An endpoint of `handler(request) -> Response`, counted and timed in `metrics` under `name` whatever it answers:
    a Problem as `answer` writes it, a client gone as 499, anything else as one line to the client (a 500) and the
    traceback to the log; the service lives on."""
    async def endpoint(request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await handler(request)
        except Problem as p:
            response = answer(p)
        except ClientDisconnect:  # the client left mid-request: nobody to answer, nothing to trace
            log.warning("a client disconnected before its request was read")
            response = Response(status_code=499)
        except Exception as e:
            log.exception("%s failed", name)
            response = answer(Problem(500, f"{name} failed: {type(e).__name__}: {e}"))
        metrics.observe(name, response.status_code, time.perf_counter() - start)
        return response
    return endpoint


# ---- the body -------------------------------------------------------------------------------------------------------

async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, at most `limit` bytes (a larger declared length is refused before a byte of it is read, a body
    without one is capped while it streams in) within `timeout` seconds; Problem 413 or 408 otherwise."""
    declared = request.headers.get("content-length", "")
    if is_digits(declared) and int(declared) > limit:
        raise Problem(413, f"the body is {int(declared)} bytes, over this server's {limit}", "body")
    body = bytearray()

    async def read():
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise Problem(413, f"the body is over this server's {limit} bytes", "body")

    try:
        await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:  # a client trickling its body holds a connection and a task: let it go
        raise Problem(408, f"the body did not arrive within {timeout:g} s", "body") from None
    return bytes(body)


def json_object(data: bytes, what: str, hint: str = "") -> dict:
    """`data` read as a JSON object; Problem 422 (field "body") naming `what` otherwise."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested deeper than any request needs
        raise Problem(422, f"{what} is not JSON{hint}", "body") from None
    if not isinstance(value, dict):
        raise Problem(422, f"{what} must be a JSON object, got {type(value).__name__}", "body")
    return value


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
