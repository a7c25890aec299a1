"""`gandeploy serve --engine triton`: the Sampler bound as a Triton model through PyTriton (nvidia-pytriton), so
NVIDIA's own server does HTTP, gRPC, metrics and dynamic batching in front of our backends.

The model has the signature `gandeploy triton`'s repository and our v2 endpoint declare: the export's name, input
`z` FP32 [-1, latent_dim], for conditional exports `label` INT64 [-1, 1], output `images` (UINT8 [-1, h, w, c] or
FP32 [-1, c, h, w]). Triton runs a Python model through a stub process that links libpython, so the Python that
runs this must have a shared libpython (a distribution's python3 does; pyenv's default build does not).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

from ..errors import UserError
from ..runtime.sampler import Sampler
from .oip import tensors
from .service import ServeOptions

PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's own defaults


def check_python() -> None:
    """One line when this Python cannot host Triton's Python backend stub: the stub links libpython by its soname,
    and the dynamic linker must find this Python's own (else the stub runs one Python's library under another's
    standard library and dies: pyenv's 3.11.7 beside Debian's 3.11.2 fails on RLock._recursion_count)."""
    try:
        import pytriton
    except ImportError:
        raise UserError("--engine triton needs nvidia-pytriton: pip install 'gandeploy[triton-server]' (Linux, "
                        "Python 3.8-3.13 with a shared libpython), or use --engine starlette") from None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = Path(pytriton.__file__).parent / "tritonserver" / "python_backend_stubs" / version
    stub = stub / "triton_python_backend_stub"
    if not stub.is_file():
        raise UserError(f"--engine triton: nvidia-pytriton has no Python backend stub for Python {version}; use a "
                        f"Python it supports (3.8-3.13), or --engine starlette")
    own = None
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        own = os.path.realpath(Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME"))
    found = _linked_libpython(stub)
    if own is None or found is None or os.path.realpath(found) != own:
        raise UserError(f"--engine triton: Triton's Python backend stub would load {found or 'no libpython'}, not "
                        f"this Python's ({own or 'built without a shared libpython'}: {sys.executable}); make the "
                        f"venv with the Python that library belongs to (e.g. /usr/bin/python3 -m venv), or use "
                        f"--engine starlette")


def _linked_libpython(binary: Path) -> str | None:
    """The libpython file the dynamic linker gives `binary` (ldd), or None."""
    try:
        listing = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing.splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name.startswith("libpython") and rest.startswith("/"):
            return rest.split(" (")[0]
    return None


def serve_triton(export_dir: str | Path, options: ServeOptions, grpc_port: int = PORTS["grpc"],
                 metrics_port: int = PORTS["metrics"], log=print) -> None:
    """Serve an export on Triton until Ctrl-C or SIGTERM; Triton finishes the requests in flight first."""
    check_python()
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    sampler = Sampler(export_dir, backend=options.backend, device=options.device, precision=options.precision,
                      max_batch=options.batch_size)
    manifest = sampler.manifest
    if manifest is None:
        raise UserError(f"--engine triton serves an export folder; {export_dir} is a generator folder: run "
                        f"gandeploy export on it first")
    # Triton's max_batch_size: what one batch, and so one request, may hold; the export's max, as `gandeploy triton`
    # writes it, unless --batch-size says less
    most = options.batch_size or manifest["batch"]["max"]
    inputs, outputs = tensors(sampler)

    @batch
    def infer(z, label=None):
        return {"images": sampler.run(z, None if label is None else label.reshape(-1))}

    preferred = sorted({b for b in (manifest["batch"]["opt"], most) if b <= most})
    model = ModelConfig(max_batch_size=most, batcher=DynamicBatcher(
        max_queue_delay_microseconds=int(options.max_delay_ms * 1000), preferred_batch_size=preferred))
    config = TritonConfig(http_address=options.host, http_port=options.port, grpc_address=options.host,
                          grpc_port=grpc_port, metrics_address=options.host, metrics_port=metrics_port,
                          exit_timeout_secs=int(options.timeout_s) + 5)
    # SIGTERM (docker stop, Kubernetes) ends the serve loop as Ctrl-C does: Triton then drains and exits
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with sampler, Triton(config=config) as triton:
        triton.bind(model_name=manifest["name"], infer_func=[infer] * options.workers,
                    inputs=[Tensor(name=n, dtype=t, shape=s) for n, t, s in inputs],
                    outputs=[Tensor(name=n, dtype=t, shape=s) for n, t, s in outputs], config=model, strict=True)
        info = sampler.info
        log(f"gandeploy serve --engine triton: {Path(export_dir)} as model {manifest['name']!r} on {info['backend']} "
            f"({info['device']}, {info['precision']}), Triton's dynamic batcher up to {most} images, queue delay "
            f"{options.max_delay_ms:g} ms, {options.workers} instance(s)")
        log(f"HTTP {options.host}:{options.port}, gRPC {options.host}:{grpc_port}, metrics "
            f"{options.host}:{metrics_port}/metrics; Ctrl-C or SIGTERM drains in-flight requests")
        triton.serve()
    log("stopped: Triton drained the requests in flight")
