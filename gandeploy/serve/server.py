"""Run the app on uvicorn: bind first (so a taken port is one clear line, and --port 0 works), say where, drain on
Ctrl-C / SIGTERM."""

from __future__ import annotations

import ipaddress
import signal
import socket
from pathlib import Path

import uvicorn

from ..errors import UserError
from .app import ServeOptions, create_app


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
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(options.timeout_s) + 5)
    DrainingServer(config).run(sockets=[sock])
    served = sum(s.value for m in service.metrics.requests.collect() for s in m.samples
                 if s.name.endswith("_total") and s.labels.get("endpoint") == "generate")
    log(f"stopped: {int(served)} generate requests answered, none left in flight")
