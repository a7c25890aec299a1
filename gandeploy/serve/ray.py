"""`gandeploy serve EXPORT --ray --replicas N`: the same HTTP API (v1 and the Open Inference Protocol) as Ray Serve
replicas, each holding its own Sampler and batching front; Ray's proxy spreads the requests and Ray Serve replaces
a replica that dies. Needs the `ray` extra; imports no torch."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..errors import UserError
from .app import create_app
from .service import ServeOptions


def application(export_dir: str | Path, options: ServeOptions, replicas: int = 2, cpus_per_replica: float = 0.0):
    """A Ray Serve application of the gandeploy app: bind it and serve.run it, or let `serve` do it."""
    try:
        from ray import serve
    except ImportError as e:
        raise UserError(f"--ray needs Ray Serve ({e}); pip install 'gandeploy[ray]'") from None
    export_dir = str(Path(export_dir).resolve())

    def build():  # runs in each replica: its own Sampler, batching front and metrics
        return create_app(export_dir, options)

    from ..runtime.device import cuda_device_count

    gpus = 1 if options.device.startswith("cuda") or (options.device == "auto" and cuda_device_count()) else 0
    ingress = serve.ingress(build)()
    deployment = serve.deployment(ingress, name="gandeploy", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus},
                                  health_check_period_s=1, graceful_shutdown_timeout_s=options.timeout_s + 5)
    return deployment.bind()


def serve_ray(export_dir: str | Path, options: ServeOptions, replicas: int, log=print) -> None:
    """Start a local Ray instance (or join RAY_ADDRESS), run the application on options.host:port, and block until
    Ctrl-C / SIGTERM; then shut Serve down."""
    import ray
    from ray import serve

    if replicas < 1:
        raise UserError(f"--replicas {replicas}: at least 1")
    app = application(export_dir, replace(options, port=options.port), replicas)
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": options.host, "port": options.port})
    serve.run(app, name="gandeploy", route_prefix="/")
    log(f"gandeploy serve --ray: {export_dir} on {replicas} Ray Serve replica(s)")
    log(f"listening on http://{options.host}:{options.port} (Ray Serve's proxy)")
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
        log("stopped")
