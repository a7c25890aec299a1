"""`gandeploy.latents`: the latents of image k of a seed, as every backend, the server and a client compute them.
The code lives in `gandeploy.formats.latents` (the run-time vocabulary); this name stays for users' imports."""

from .formats.latents import DISTRIBUTIONS, NORMAL, distribution, latents  # noqa: F401

__all__ = ["DISTRIBUTIONS", "NORMAL", "distribution", "latents"]
