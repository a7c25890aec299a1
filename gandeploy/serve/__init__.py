"""`gandeploy serve`: an HTTP service over the Sampler's batching front (Starlette on uvicorn)."""

from .app import create_app
from .server import serve
from .service import ServeOptions

__all__ = ["ServeOptions", "create_app", "serve"]
