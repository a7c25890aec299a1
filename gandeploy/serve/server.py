"""Run the app on uvicorn: bind first (so a taken port is one clear line, and --port 0 works), say where, drain on
Ctrl-C / SIGTERM."""

from __future__ import annotations

import ipaddress
import logging
import signal
import socket
from pathlib import Path

import uvicorn

from ..errors import UserError
from .app import create_app
from .service import ServeOptions

log = logging.getLogger("gandeploy.serve")


MAX_HEADER_BYTES = 16 * 1024  # request line + headers; more is answered 431 and the connection closed


class HeaderGuard:
    """What uvicorn's httptools protocol lacks against slow and oversized clients, as a mixin in front of it: a
    deadline of `header_timeout_s` for each request's headers, and a cap of MAX_HEADER_BYTES on their size."""

    header_timeout_s = 10.0
    _deadline = None
    _header_bytes = 0
    _in_headers = True
    _tail = b""

    def connection_made(self, transport):
        super().connection_made(transport)
        self._arm()

    def _arm(self):
        self._disarm()
        self._in_headers, self._header_bytes, self._tail = True, 0, b""
        self._deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self):
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self):
        if not self.transport.is_closing():
            log.warning("dropped a client that sent no complete request headers within %g s", self.header_timeout_s)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._in_headers:  # count the bytes up to the blank line that ends the headers, not the body's
            seen = self._tail + data  # the blank line may be split across two reads
            end = seen.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else max(0, end + 4 - len(self._tail))
            self._tail = seen[-3:]
            if self._header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self._disarm()
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                self.transport.close()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a next request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        self._in_headers = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers, self._header_bytes, self._tail = True, 0, b""  # the next request counts afresh

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float):
    """uvicorn's httptools protocol behind a HeaderGuard of `header_timeout_s`. None where uvicorn's internals are
    not the ones this was written against (the stock protocol is used then)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return None
    if not all(hasattr(HttpToolsProtocol, m) for m in ("on_message_begin", "on_headers_complete", "data_received")):
        return None
    return type("GuardedProtocol", (HeaderGuard, HttpToolsProtocol), {"header_timeout_s": header_timeout_s})


class DrainingServer(uvicorn.Server):
    """Exits 0 after draining (stock uvicorn re-raises the signal once drained, ending the process with 130/143);
    a second Ctrl-C still forces the exit."""

    def handle_exit(self, sig, frame):
        self.force_exit = self.should_exit and sig == signal.SIGINT
        self.should_exit = True


def _bind(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise UserError(f"--host {host!r}: cannot resolve it ({e.strerror}); use an IP address such as 127.0.0.1")
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)  # connections made before uvicorn starts accepting wait in the backlog
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port (0 = any free one)")
    return sock


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(export_dir: str | Path, options: ServeOptions | None = None, log=print) -> None:
    """Serve an export until Ctrl-C or SIGTERM, then finish the requests in flight and return."""
    options = options or ServeOptions()
    app = create_app(export_dir, options)
    sock = _bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    service = app.state.service
    info = service.sampler.info
    batching = (f"batching up to {info['max_batch']} images per backend call, queue {options.max_queue} images"
                if options.batching else "batching off: one backend call per request")
    reach = "this machine only; --host 0.0.0.0 to listen on every interface" if _is_loopback(host) else \
        "every client that can reach this address: put it behind your gateway"
    log(f"gandeploy serve: {Path(export_dir)} on {info['backend']} ({info['device']}, {info['precision']}), {batching}")
    log(f"listening on {url} ({reach})")
    log(f"open {url}/v1/generate?n=16&seed=0&scale=4 in a browser; Ctrl-C or SIGTERM drains in-flight requests")
    protocol = guarded_protocol(options.client_timeout_s)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(options.timeout_s) + 5, timeout_keep_alive=5,
                            **({"http": protocol} if protocol is not None else {}))
    DrainingServer(config).run(sockets=[sock])
    served = sum(s.value for m in service.metrics.requests.collect() for s in m.samples
                 if s.name.endswith("_total") and s.labels.get("endpoint") == "generate")
    log(f"stopped: {int(served)} generate requests answered, none left in flight")
