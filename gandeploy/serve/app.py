"""The ASGI app over one service: health and readiness, Prometheus metrics, the v1 API (v1.py) and the Open
Inference Protocol (oip.py), each on the shared HTTP core (http.py).

Starlette rather than FastAPI: a few routes whose inputs the Sampler already validates do not need pydantic, and one
dependency less is one less thing to break in a production image; uvicorn with httptools and uvloop underneath.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import oip, v1
from .http import RETRY_AFTER_S, timed
from .service import ServeOptions, Service


def create_app(export_dir: str | Path, options: ServeOptions | None = None) -> Starlette:
    """Load the export (bad input fails here, before anything listens) and build the ASGI app."""
    service = Service(export_dir, options or ServeOptions())
    routes = [*oip.routes(service), *v1.routes(service), *health_routes(service)]
    app = Starlette(routes=routes, lifespan=lifespan(service), exception_handlers={HTTPException: oip.http_error})
    app.state.service = service
    return app


def health_routes(service: Service) -> list[Route]:
    """/healthz (the process answers), /readyz (the model is warmed up, or why not) and /metrics."""
    metrics = service.metrics

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        if service.ready:
            return JSONResponse({"status": "ready", "backend": service.sampler.info["backend"]})
        return JSONResponse({"status": service.failed or "warming up"}, status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    return [Route("/healthz", timed(metrics, "healthz", healthz)),
            Route("/readyz", timed(metrics, "readyz", readyz)),
            Route("/metrics", lambda request: Response(metrics.text(), media_type=metrics.content_type))]


def lifespan(service: Service):
    """Warm up in the background once the app starts (/readyz says when it is done); close the service at the end."""
    @contextlib.asynccontextmanager
    async def span(app):
        threading.Thread(target=service.warm_up, name="gandeploy-warm-up", daemon=True).start()
        yield
        service.close()
    return span
