"""The `gandeploy` command: thin wrappers that parse, validate and call one library function each."""

from __future__ import annotations

import contextlib
import errno
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import BrokenArtifact, CheckFailed, TrainingDiverged, UserError

TRITON_REPO = "exports/triton"
# optional modules -> the pyproject extra that installs them
EXTRAS = {"torch": "train", "yaml": "train", "safetensors": "train", "tensorboard": "tensorboard",
          "onnx": "export", "onnxscript": "export", "onnxconverter_common": "export", "onnxruntime": "cpu",
          "starlette": "serve", "uvicorn": "serve", "prometheus_client": "serve", "matplotlib": "bench",
          "tritonclient": "triton", "google": "triton", "ray": "ray"}

app = typer.Typer(help="Train GAN generators, export them, and sample them in production.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _global_options(verbose: bool = typer.Option(
        False, "--verbose", help="Log what gandeploy decides (which backends were tried and why they could not run) "
                                 "on stderr.")):
    """Train GAN generators, export them, and sample them in production."""
    import logging

    # warnings (a Sampler on PyTorch) always; with --verbose, every decision
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@contextlib.contextmanager
def _errors(extra: str | None = None):
    """Bad input ends in one line on stderr and exit code 2; a diverged run in one line and exit code 1. A missing
    optional module names the extra that brings it: the command's own (`extra`), else the module's."""
    try:
        yield
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except TrainingDiverged as e:
        typer.echo(f"stopped: {e}", err=True)
        raise typer.Exit(1) from None
    except CheckFailed as e:
        typer.echo(f"check failed: {e}", err=True)
        raise typer.Exit(1) from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        typer.echo(f"error: {_disk_full(e)}", err=True)
        raise typer.Exit(2) from None
    except ModuleNotFoundError as e:  # an optional dependency of this command: say which extra brings it
        top = (e.name or "").split(".")[0]
        if top not in EXTRAS:
            raise
        typer.echo(f"error: this command needs {top}, which is not installed here; pip install "
                   f"'gandeploy[{extra or EXTRAS[top]}]'", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: the last checkpoint is intact; continue with --resume RUN_DIR", err=True)
        raise typer.Exit(130) from None


def _disk_full(e: Exception) -> str:
    where = getattr(e, "filename", None)
    what = f"writing {where}" if where else "writing"
    return (f"the disk is full ({what}); nothing written before was lost. Free space, then run the command again "
            f"(a training run goes on with --resume RUN_DIR)")


@app.command()
def train(
    recipe: Optional[str] = typer.Argument(
        None, help="Recipe YAML, e.g. recipes/dcgan_mnist.yaml (optional with --resume)."),
    overrides: Optional[List[str]] = typer.Argument(
        None, help="KEY=VALUE overrides, e.g. train.steps=200 data.limit=1000."),
    out: Optional[str] = typer.Option(None, "--out", help="Run folder (default: runs/<name>, numbered if taken)."),
    resume: Optional[str] = typer.Option(
        None, "--resume", help="Continue the run in this folder from its last checkpoint."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the fully resolved recipe and exit."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """Train a generator from a YAML recipe into a run folder (checkpoints, generator/, samples/, log.jsonl)."""
    with _errors("train"):
        from .train import prepare_run
        from .train import train as run_training

        overrides = list(overrides or [])
        if recipe is not None and "=" in recipe and not Path(recipe).exists():
            overrides.insert(0, recipe)  # `gandeploy train --resume runs/x train.steps=5000`
            recipe = None
        resolved, run_dir = prepare_run(recipe, overrides, out, resume)
        if dry_run:
            typer.echo(resolved.to_yaml(), nl=False)
            return
        last = run_training(resolved, run_dir, device=device, resume=resume is not None, progress=progress)
        if last.get("d_loss") is not None:
            typer.echo(f"done: step {last['step']}, D loss {last['d_loss']:.3f}, G loss {last['g_loss']:.3f}, "
                       f"{last['elapsed_s']:.0f} s of training -> {run_dir}/generator, grids in {run_dir}/samples")
        else:
            typer.echo(f"nothing to do: {run_dir} is already at step {last['step']} (raise train.steps to go on)")


@app.command()
def sample(
    source: Optional[str] = typer.Argument(
        None, help="An export, a run folder or its generator/ folder (default: the latest run under runs/)."),
    n: int = typer.Option(64, "--n", min=1, max=4096, help="Number of images."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed: image k of a seed is the same whatever --n."),
    labels: Optional[str] = typer.Option(
        None, "--labels",
        help="Class labels for conditional models: one, or a comma list of n (default: k % classes)."),
    out: str = typer.Option("grid.png", "--out", help="PNG file to write."),
    scale: int = typer.Option(2, "--scale", min=1, max=16, help="Enlarge pixels this many times in the PNG."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch, onnxruntime or tensorrt."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (the FP16 ONNX or engine)."),
):
    """Write a grid of samples through the Sampler (the same images any backend and the server give)."""
    with _errors():
        from .formats.images import save_grid
        from .formats.labels import LabelError, check_labels, parse_labels
        from .formats.paths import latest_run
        from .runtime import Sampler

        source = source if source is not None else latest_run()
        with Sampler(source, backend=backend, device=device, precision=precision) as sampler:
            classes = sampler.config["num_classes"]
            try:
                wanted = check_labels(parse_labels(labels), n, classes)
            except LabelError as e:
                raise UserError(f"--labels: {e}") from None
            save_grid(sampler.sample(n, seed, wanted), out, scale=scale)
            typer.echo(f"wrote {n} samples of {source} (seed {seed}, {sampler.info['backend']}) to {out}")


@app.command()
def export(
    source: Optional[str] = typer.Argument(
        None, help="A run folder, its generator/ folder, or an export folder (with --trt) (default: the latest run)."),
    onnx: bool = typer.Option(False, "--onnx", help="Write generator.onnx (and its FP16 twin); the default."),
    trt: bool = typer.Option(False, "--trt", help="Also build a TensorRT engine for this GPU (tensorrt + CUDA)."),
    fp16: bool = typer.Option(True, "--fp16/--no-fp16", help="Write generator.fp16.onnx; build FP16 engines."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset."),
    min_batch: Optional[int] = typer.Option(None, "--min-batch", help="Smallest batch (engine profile; checked). "
                                                                      "Default 1."),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="Batch the engine is tuned for (checked). "
                                                                      "Default 64; 4 with --stylegan."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Largest batch (engine profile; checked). "
                                                                      "Default 256; 16 with --stylegan."),
    output: str = typer.Option(
        "uint8", "--output", help="uint8: images (n, h, w, c) from the graph; float: raw (n, c, h, w)."),
    out: Optional[str] = typer.Option(None, "--out", help="Export folder (default: exports/<run name>)."),
    triton: bool = typer.Option(
        False, "--triton", help="Also write a Triton model repository into triton/ beside the export folder."),
    module: Optional[str] = typer.Option(
        None, "--module", help="Your generator: PKG.MOD:NAME, a class or a function returning the nn.Module "
                               "(imported from the working folder, as uvicorn does). Needs --weights, --latent-dim."),
    arch: Optional[str] = typer.Option(
        None, "--arch", help="A known architecture instead of --module: dcgan-tutorial (the PyTorch DCGAN "
                             "tutorial's generator; sizes read from --weights)."),
    weights: Optional[str] = typer.Option(
        None, "--weights", help="state_dict for --module/--arch: .safetensors, or .pth/.pt (read with "
                                "torch.load(weights_only=True); a pickled whole module is refused)."),
    latent_dim: Optional[int] = typer.Option(None, "--latent-dim", help="--module: size of z the export takes."),
    latent_shape: Optional[str] = typer.Option(
        None, "--latent-shape", help="--module: the shape forward wants z in, e.g. 100,1,1 (default: latent-dim)."),
    value_range: Optional[str] = typer.Option(
        None, "--value-range", help="--module: range of its images, LO,HI (default -1,1)."),
    classes: int = typer.Option(0, "--classes", min=0, help="--module: classes of a forward(z, labels) generator."),
    stylegan: Optional[str] = typer.Option(
        None, "--stylegan", help="An NVIDIA network pickle (stylegan2-ada-pytorch, stylegan3), read without running "
                                 "the code it carries."),
    psi: float = typer.Option(1.0, "--psi", help="--stylegan: truncation psi (1: none; 0.7 is common)."),
    truncation_cutoff: Optional[int] = typer.Option(
        None, "--truncation-cutoff", help="--stylegan: truncate only the first N w vectors (default: all)."),
    noise: str = typer.Option("const", "--noise", help="--stylegan: const (the stored noise) or none."),
    network: str = typer.Option("G_ema", "--network", help="--stylegan: which network of the pickle: G_ema or G."),
    latent_dist: str = typer.Option(
        "normal", "--latent-dist", help="The z the generator was trained on: normal, truncated_normal (|z| <= "
                                        "--latent-bound, BigGAN's) or uniform (in [-bound, bound]). Recorded in the "
                                        "manifest; the Sampler, serve, generate and verify draw from it."),
    latent_bound: Optional[float] = typer.Option(
        None, "--latent-bound", help="--latent-dist bound (default 2 for truncated_normal, 1 for uniform)."),
    latent_scale: float = typer.Option(
        1.0, "--latent-scale", help="Multiplies z (BigGAN's truncation: --latent-dist truncated_normal "
                                    "--latent-scale 0.4)."),
):
    """Export a generator to ONNX (FP32 + FP16) and TensorRT, checking every file against PyTorch: a run of ours,
    your own module (--module or --arch, with --weights), or an NVIDIA StyleGAN2/3 pickle (--stylegan)."""
    with _errors("export"):
        from .export import ExportOptions
        from .export import export as run_export
        from .export.stylegan import BATCHES
        from .formats.paths import latest_run
        from .formats.latents import distribution

        given = {k: v for k, v in (("min_batch", min_batch), ("opt_batch", opt_batch), ("max_batch", max_batch))
                 if v is not None}
        try:
            dist = distribution(latent_dist, latent_bound, latent_scale)
        except ValueError as e:
            raise UserError(f"--latent-dist {latent_dist}: {e}") from None
        options = ExportOptions(onnx=onnx or not trt, trt=trt, fp16=fp16, opset=opset, output=output,
                                latent_distribution=None if dist == distribution() else dist,
                                **{**(BATCHES if stylegan else {}), **given})
        if stylegan:
            from .export.stylegan import export_stylegan

            if source is not None or module or arch or weights:
                raise UserError("--stylegan takes the pickle alone; leave out the run folder, --module, --arch and "
                                "--weights")
            folder = export_stylegan(stylegan, out, psi=psi, cutoff=truncation_cutoff, noise_mode=noise,
                                     network_name=network, options=options, log=typer.echo)
        elif module or arch or weights:
            from .export.module import export_files

            if source is not None:
                raise UserError(f"pass either a run or export folder ({source}) or --module/--arch with --weights")
            if weights is None:
                raise UserError("--weights FILE is required with --module or --arch")
            folder = export_files(weights, out, module=module, arch=arch, latent_dim=latent_dim,
                                  latent_shape=_number_list(latent_shape, "--latent-shape", int),
                                  value_range=_number_list(value_range, "--value-range", float, 2),
                                  num_classes=classes, options=options, log=typer.echo)
        else:
            folder = run_export(source if source is not None else latest_run(), out, options, log=typer.echo)
        if triton:
            from .export.triton import write_repository

            write_repository(folder, Path(folder).parent / "triton", log=typer.echo)


@app.command()
def triton(
    export_dir: Optional[str] = typer.Argument(
        None, help="An export folder (default: the latest under exports/); with --check, a Triton model folder."),
    out: str = typer.Option(TRITON_REPO, "--out", help="Model repository to write <name>/ into."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name in Triton (default: the export's)."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16: which ONNX (or engines) to serve."),
    instances: int = typer.Option(1, "--instances", help="Model instances per device (instance_group count)."),
    kind: str = typer.Option("gpu", "--kind", help="gpu or cpu instances."),
    max_queue_delay_us: int = typer.Option(
        100, "--max-queue-delay-us", help="How long Triton's dynamic batcher waits for company, in microseconds."),
    trt_accelerator: bool = typer.Option(
        False, "--trt-accelerator", help="Run the ONNX model through ONNX Runtime's TensorRT provider (GPU only)."),
    check: bool = typer.Option(False, "--check", help="Only check an existing model folder (config.pbtxt + 1/)."),
):
    """Write a Triton Inference Server model repository (config.pbtxt + 1/model.onnx or plans), checked against
    Triton's own config schema and the ONNX graph."""
    with _errors():
        from .export.triton import check_model, write_repository
        from .formats.paths import latest_export

        if check:
            if export_dir is None:
                raise UserError("--check: pass the model folder to check, e.g. exports/triton/dcgan_mnist")
            config = check_model(export_dir)
            typer.echo(f"{export_dir}: config.pbtxt parses with Triton's schema and matches its model "
                       f"({config.platform}, max_batch_size {config.max_batch_size})")
            return
        write_repository(export_dir if export_dir is not None else latest_export(), out, name=name,
                         precision=precision, instances=instances, kind=kind, max_queue_delay_us=max_queue_delay_us,
                         tensorrt_accelerator=trt_accelerator, log=typer.echo)


@app.command()
def fid(
    source: str = typer.Argument(..., help="A run, an export, or an image folder."),
    real: str = typer.Option("mnist", "--real", help="mnist (the bundled digits), an image folder, or a stats .npz."),
    n: int = typer.Option(2048, "--n", min=2, help="Images to draw from SOURCE (and from REAL when it has them)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the generated images."),
    batch_size: int = typer.Option(50, "--batch-size", min=1, help="Feature network batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N] for the feature network."),
):
    """FID of a generator (or image folder) against real data, with the Inception network of FID's definition."""
    import warnings

    with _errors("train,fid"):
        from .metrics.fid import compute_fid
        from .train import torch_device

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = compute_fid(source, real, n, seed, batch_size, str(torch_device(device)))
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        real_n = f"N={result['real_n']} " if result["real_n"] else ""
        typer.echo(f"FID {result['fid']:.2f}  ({result['source']}, N={result['n']}; against {real_n}"
                   f"{result['real']}; network: {result['network']})")
        if "kid" in result:
            typer.echo(f"KID {result['kid']:.5f} +- {result['kid_std']:.5f}  (unbiased, std over 100 subsets)")
            typer.echo(f"precision {result['precision']:.3f}, recall {result['recall']:.3f}  (k=3)")


@app.command()
def bench(
    export_dir: Optional[str] = typer.Argument(None, help="An export folder (default: the latest under exports/)."),
    backends: str = typer.Option("torch,onnxruntime,tensorrt", "--backends", help="Comma list of backends."),
    batch_sizes: str = typer.Option("1,8,64,256", "--batch-sizes", help="Comma list of batch sizes."),
    fid_samples: Optional[int] = typer.Option(
        None, "--fid-samples", min=0,
        help="Images per FID (default: 10000 on a GPU, none on CPU, 100 with --quick; 0 = no FID)."),
    real: str = typer.Option(
        "mnist", "--real", help="Real data for FID: mnist (the bundled digits), an image folder, or an export "
                                "(its PyTorch FP32 images of seed 2: distribution parity with our own network)."),
    quick: bool = typer.Option(False, "--quick", help="Shorter timing windows and fewer parity samples."),
    out: Optional[str] = typer.Option(None, "--out", help="Report folder (default: bench/results/<name>)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
):
    """Throughput, latency and parity (paired and FID) of every backend on one export, in one report."""
    with _errors():
        from .bench import QUICK_FID_SAMPLES, BenchOptions, run_bench
        from .formats.paths import latest_export
        from .runtime.device import cuda_device_count

        sizes = _int_list(batch_sizes, "--batch-sizes")
        names = tuple(b.strip() for b in backends.split(",") if b.strip())
        if fid_samples is None:  # quick: a small FID sample (flagged in the report); CPU: FID off unless asked
            fid_samples = QUICK_FID_SAMPLES if quick else (10000 if cuda_device_count() else 0)
        options = BenchOptions(backends=names, batch_sizes=sizes, fid_samples=fid_samples, real=real, quick=quick,
                               device=device)
        run_bench(export_dir if export_dir is not None else latest_export(), options, out, log=typer.echo)


@app.command()
def serve(
    export_dir: Optional[str] = typer.Argument(None, help="An export folder (default: the latest under exports/)."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch, onnxruntime or tensorrt."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16 (the FP16 ONNX or engine)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port (0: any free port, printed at start)."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", "--max-batch", min=1,
        help="Images per backend call, at most the export's --max-batch (default: its --opt-batch; with --engine "
             "triton, Triton's max_batch_size, default the export's --max-batch)."),
    max_delay_ms: float = typer.Option(
        0.0, "--max-delay-ms", min=0.0,
        help="Wait up to this long for more requests before a batch (0: run what waits as soon as the backend is "
             "free, as Triton does)."),
    max_queue: int = typer.Option(4096, "--max-queue", min=1, help="Images that may wait; more get 503."),
    max_images_per_request: Optional[int] = typer.Option(
        None, "--max-images-per-request", min=1,
        help="Largest n one request may ask for; more get 422 (default: 1024, or --max-queue if smaller)."),
    timeout_s: float = typer.Option(30.0, "--timeout-s", min=0.001, help="A request waiting longer gets 504."),
    batching: bool = typer.Option(
        True, "--batching/--no-batching", help="Coalesce requests into backend batches (off: one call each)."),
    ray: bool = typer.Option(False, "--ray", help="Serve on Ray Serve replicas (a local Ray, or RAY_ADDRESS's)."),
    replicas: int = typer.Option(2, "--replicas", min=1, max=64, help="With --ray: replicas, each its own Sampler."),
    client_timeout_s: float = typer.Option(
        10.0, "--client-timeout-s", min=0.1,
        help="A request's headers, then its body, must arrive within this; slower clients are dropped."),
    workers: int = typer.Option(
        1, "--workers", min=1, max=64,
        help="Backend calls at once (Triton's instance count); 2 can help where one call leaves cores idle."),
    engine: str = typer.Option(
        "starlette", "--engine", help="starlette: gandeploy's server (v1 + v2 on one port). triton: NVIDIA's Triton "
                                      "through PyTriton (v2 over HTTP and gRPC; needs 'gandeploy[triton-server]' and "
                                      "a Python with a shared libpython)."),
    grpc_port: int = typer.Option(8001, "--grpc-port", min=1, max=65535, help="--engine triton: gRPC port."),
    metrics_port: int = typer.Option(8002, "--metrics-port", min=1, max=65535,
                                     help="--engine triton: Prometheus metrics port."),
):
    """Serve an export over HTTP: POST /v1/generate, GET /v1/generate?n=&seed=, the Open Inference Protocol under
    /v2, /healthz, /readyz, /metrics; or the same model on Triton with --engine triton."""
    with _errors():
        from .formats.paths import latest_export

        try:
            from .serve import ServeOptions
            from .serve import serve as run_server
        except ImportError as e:
            raise UserError(f"gandeploy serve needs the serve extra ({e}); pip install 'gandeploy[serve]'") from None
        options = ServeOptions(backend=backend, device=device, precision=precision, batch_size=batch_size,
                               max_delay_ms=max_delay_ms, max_queue=max_queue,
                               max_images_per_request=max_images_per_request, timeout_s=timeout_s,
                               batching=batching, workers=workers, host=host, port=port,
                               client_timeout_s=client_timeout_s)
        folder = export_dir if export_dir is not None else latest_export()
        if engine not in ("starlette", "triton"):
            raise UserError(f"--engine {engine!r} is not one of starlette, triton")
        if engine == "triton":
            if ray:
                raise UserError("--engine triton and --ray are two servers; pick one")
            if port == 0:
                raise UserError("--engine triton needs a fixed --port (Triton cannot pick a free one)")
            from .serve.triton_engine import serve_triton

            serve_triton(folder, options, grpc_port, metrics_port, log=typer.echo)
            return
        if ray:
            from .serve.ray import serve_ray

            serve_ray(folder, options, replicas, log=typer.echo)
            return
        run_server(folder, options, log=typer.echo)


def _number_list(text: str | None, flag: str, kind=int, count: int | None = None):
    """'100,1,1' -> (100, 1, 1); None stays None."""
    if text is None:
        return None
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag}: {text!r} is not a comma list of {kind.__name__}s") from None
    if count is not None and len(values) != count:
        raise UserError(f"{flag}: {text!r} needs exactly {count} numbers")
    return values


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag}: {text!r} is not a comma list of integers") from None
    if not values or min(values) < 1:
        raise UserError(f"{flag}: sizes must be positive integers")
    return values


@app.command()
def generate(
    export_dir: str = typer.Argument(..., help="An export folder (or a run folder, with the torch backend)."),
    n: int = typer.Option(..., "--n", min=1, help="Images to write: 0..N-1 of --seed."),
    out: str = typer.Option(
        ..., "--out", help="Folder for the shards and shards.json (new, empty, or a killed run's)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed: image k of it is the same as everywhere else."),
    labels: Optional[str] = typer.Option(
        None, "--labels",
        help="Conditional models: one class for every image, as in `sample --labels 3` (default: image k gets "
             "k % classes)."),
    fmt: str = typer.Option("npz", "--format", help="npz (fastest), tar (WebDataset: key.png + key.json) or png."),
    shard_size: int = typer.Option(4096, "--shard-size", min=1, help="Images per shard file."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch, onnxruntime or tensorrt."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or fp16."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with images/s."),
    ray: int = typer.Option(0, "--ray", min=0, max=1024,
                            help="Write the shards with this many Ray actors (local Ray, or RAY_ADDRESS's)."),
):
    """Write many images as shards with a shards.json (index range, count, sha256 each); a killed run resumes where
    it stopped, and its shards come out byte for byte as an uninterrupted run's."""
    with _errors():
        from .formats.labels import LabelError, parse_labels
        from .runtime.generate import Plan
        from .runtime.generate import write_shards

        try:
            label = parse_labels(labels)
        except LabelError as e:
            raise UserError(f"--labels: {e}") from None
        if isinstance(label, list):
            raise UserError(f"--labels {labels}: generate writes n images of one class, or k % classes without "
                            f"--labels; a list of labels, one per image, is for gandeploy sample")
        plan = Plan(n=n, seed=seed, label=label, format=fmt, shard_size=shard_size)
        write_shards(export_dir, out, plan, backend=backend, device=device, precision=precision, progress=progress,
                     log=typer.echo, ray_workers=ray)


@app.command()
def verify(
    export_dir: Optional[str] = typer.Argument(None, help="An export folder (default: the latest under exports/)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Only this backend (default: every one that loads)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 or fp16 (default: both, where present)."),
    device: str = typer.Option("auto", "--device", help="auto (every device here), cpu or cuda[:N]."),
):
    """Check every backend that runs here against the PyTorch FP32 outputs stored in the export. Exit 0: all passed;
    1: a check failed; 2: bad input. Needs no torch: run it on the machine that will serve."""
    with _errors():
        from .formats.paths import latest_export
        from .runtime.verify import verify as run_verify

        folder = export_dir if export_dir is not None else latest_export()
        try:
            checks = run_verify(folder, backend, precision, device)
        except BrokenArtifact as e:  # damaged, changed or foreign files: the export fails, it is not bad input
            typer.echo(f"FAILED   {e}")
            typer.echo(f"{folder}: the export is damaged; no check ran")
            raise typer.Exit(1) from None
        for check in checks:
            typer.echo(check.line())
        failed = [c for c in checks if c.status == "FAILED"]
        ran = [c for c in checks if c.status != "SKIPPED"]
        typer.echo(f"{folder}: {len(ran) - len(failed)} of {len(ran)} checks passed"
                   + (f", {len(checks) - len(ran)} skipped" if len(checks) > len(ran) else ""))
        if failed:
            raise typer.Exit(1)


@app.command()
def info():
    """Print versions, devices and which backends can run here."""
    import platform

    from . import __version__
    from .runtime import backends
    from .runtime.device import cuda_device_count

    lines = [f"gandeploy {__version__}", f"python {platform.python_version()} on {platform.platform()}",
             f"cuda devices visible to the driver: {cuda_device_count()}"]
    for module in ("numpy", "torch", "onnx", "onnxruntime", "tensorrt", "cuda.bindings", "torchvision",
                   "tensorboard"):
        lines.append(f"{module}: {_probe(module)}")
    for name, entry in backends.REGISTRY.items():
        state = _probe(entry.module, "ready")
        if state == "ready":  # a backend whose library imports may still lack a GPU or a companion library
            import importlib

            reason = getattr(importlib.import_module(entry.module), "availability", lambda: None)()
            state = "ready" if reason is None else f"not available ({reason})"
        lines.append(f"backend {name}: runs on {', '.join(entry.devices)}; {state}")
    typer.echo("\n".join(lines))


def _probe(module: str, found: str | None = None) -> str:
    import importlib

    try:
        mod = importlib.import_module(module)
    except Exception as e:  # an installed package can still fail to import (torchvision built for another torch)
        return f"not available ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    text = found or getattr(mod, "__version__", "installed")
    if module == "torch":
        text += f" (CUDA build {mod.version.cuda or 'none'})"
    if module == "onnxruntime":
        text += f", providers {', '.join(mod.get_available_providers())}"
    return text


def main():
    app(prog_name="gandeploy")


if __name__ == "__main__":
    sys.exit(main())
