"""`gandeploy serve`: an HTTP service over the Sampler's batching front (Starlette on uvicorn)."""

from .app import ServeOptions, create_app
from .server import serve

__all__ = ["ServeOptions", "create_app", "serve"]
