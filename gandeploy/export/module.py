"""Bring your own generator: export any PyTorch module whose forward(z) or forward(z, labels) returns float images
(n, c, h, w), and the PyTorch DCGAN tutorial's generator by its weights alone.

The exported graph keeps gandeploy's contract (input `z` float32 (n, latent_dim), `label` int64 (n,) for
conditional models, output `images`) whatever shape the module wants its latents in. A user's code is imported
only from the path they typed (as uvicorn and gunicorn do); weights are a state_dict read without running pickled
code (safetensors, or `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
import sys
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError, cause, first_line
from ..formats.files import sha256
from .exporter import ExportOptions, require_onnx_stack, write_export


class ModuleGraph(nn.Module):
    """z (n, latent_dim) [+ labels (n,)] -> the module's images: z reshaped to what the module wants."""

    def __init__(self, module: nn.Module, latent_shape: tuple[int, ...], conditional: bool):
        super().__init__()
        self.module, self.latent_shape, self.conditional = module, tuple(latent_shape), conditional

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = z.reshape(z.shape[0], *self.latent_shape)
        return self.module(z, labels) if self.conditional else self.module(z)


def export_module(module: nn.Module, out: str | Path, *, latent_dim: int, latent_shape=None,
                  value_range=(-1.0, 1.0), num_classes: int = 0, options: ExportOptions | None = None,
                  name: str | None = None, origin: dict | None = None, log=print) -> Path:
    """Export `module` (eval mode) into the folder `out`, checked like gandeploy's own exports; returns `out`.

    latent_shape: what the module's forward wants, e.g. (100, 1, 1) for the DCGAN tutorial (default
    (latent_dim,)); value_range: the range of its images; num_classes > 0: forward(z, labels) with int64 labels."""
    options = options or ExportOptions()
    options.check()
    require_onnx_stack()
    if not isinstance(module, nn.Module):
        raise UserError(f"export_module needs a torch.nn.Module, got {type(module).__name__}")
    latent_dim, latent_shape = _check_latents(latent_dim, latent_shape)
    lo, hi = _check_range(value_range)
    _check_classes(num_classes)
    graph = ModuleGraph(module.eval(), latent_shape, num_classes > 0)
    config = {"family": "module", "latent_dim": latent_dim, "num_classes": num_classes, "value_range": [lo, hi],
              "width": None, "embed_dim": None, **_probe(graph, latent_dim, num_classes)}
    _check_labels(graph, latent_dim, num_classes)
    _check_value_range(graph, latent_dim, num_classes, lo, hi, log, options.latent_distribution)
    kind = type(module)
    origin = origin or {"module": f"{kind.__module__}.{kind.__qualname__}", "weights_sha256": _state_digest(module)}
    out = Path(out)
    return write_export(graph, config, name or out.name, out, options, origin, None, log)


MAX_LATENT_DIM = 1 << 20  # what the manifest validator accepts: checked before anything is allocated
MAX_CLASSES = 1 << 16  # every label is run before export


def _check_classes(num_classes) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 0 <= num_classes <= MAX_CLASSES:
        raise UserError(f"num_classes (--classes) must be an integer from 0 to {MAX_CLASSES}, got {num_classes!r}")


def _check_latents(latent_dim, latent_shape) -> tuple[int, tuple[int, ...]]:
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or not 1 <= latent_dim <= MAX_LATENT_DIM:
        raise UserError(f"latent_dim (--latent-dim) must be an integer from 1 to {MAX_LATENT_DIM}, got "
                        f"{latent_dim!r}")
    shape = tuple(latent_shape) if latent_shape is not None else (latent_dim,)
    if not shape or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise UserError(f"latent_shape must be positive integers, e.g. (100, 1, 1); got {latent_shape!r}")
    if math.prod(shape) != latent_dim:
        raise UserError(f"latent_shape {shape} holds {math.prod(shape)} numbers, not latent_dim={latent_dim}")
    return latent_dim, shape


def _check_range(value_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise UserError(f"value_range must be two numbers LO,HI, got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"value_range ({lo}, {hi}) must be finite with LO < HI, e.g. -1,1 or 0,1")
    return lo, hi


def _probe(graph: ModuleGraph, latent_dim: int, num_classes: int) -> dict:
    """Run the module once to learn its image shape; refuse what is not (n, c, h, w) float images."""
    z = torch.zeros(2, latent_dim)
    labels = torch.zeros(2, dtype=torch.int64) if num_classes else None
    try:
        with torch.inference_mode():
            x = graph(z, labels)
    except (Exception, SystemExit) as e:  # the user's code: its own error says best what went wrong
        raise UserError(f"the module failed on latents of shape (2, {', '.join(map(str, graph.latent_shape))})"
                        f"{' with labels' if num_classes else ''}: {cause(e)}; check "
                        f"--latent-shape/--classes") from None
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point() or len(x) != 2:
        what = f"{x.dtype}{tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"the module returned {what}; gandeploy exports generators returning float images "
                        f"(n, c, h, w)")
    _, channels, height, width = x.shape
    if height != width or channels not in (1, 3, 4):
        raise UserError(f"the module returned images of shape (c, h, w) = {tuple(x.shape[1:])}; gandeploy exports "
                        f"square images with 1, 3 or 4 channels")
    return {"resolution": int(height), "channels": int(channels)}


def _check_labels(graph: ModuleGraph, latent_dim: int, num_classes: int, chunk: int = 64) -> None:
    """Every label 0..K-1 runs (the export's checks draw labels at random: a too-small embedding would fail
    later, in a traceback)."""
    for start in range(0, num_classes, chunk):
        labels = torch.arange(start, min(start + chunk, num_classes))
        try:
            with torch.inference_mode():
                graph(torch.zeros(len(labels), latent_dim), labels)
        except (Exception, SystemExit) as e:  # the user's code
            raise UserError(f"--classes {num_classes}: the module failed on labels {start}..{start + len(labels) - 1}"
                            f" ({cause(e)}); pass the number of classes it was built for") from None


# share of output values allowed outside the declared range (a generator may overshoot a little: StyleGAN does)
RANGE_REFUSE, RANGE_WARN = 0.05, 0.0
RANGE_SPAN = 0.01  # images using less than this share of the declared range are declared wrongly


def _check_value_range(graph: ModuleGraph, latent_dim: int, num_classes: int, lo: float, hi: float, log,
                       dist: dict | None = None) -> None:
    """The module's images on 16 seeded latents against the declared value range: refused when more than 5% of
    the values fall outside it (the uint8 conversion would clip them away), a warning line for fewer."""
    from ..formats.latents import latents

    z = torch.from_numpy(latents(0, 16, latent_dim, dist=dist))
    labels = torch.arange(16) % num_classes if num_classes else None
    try:
        with torch.inference_mode():
            x = graph(z, labels).float()
    except (Exception, SystemExit) as e:  # the user's code: random latents may reach what zeros did not
        raise UserError(f"the module failed on 16 random latents: {cause(e)}") from None
    margin = 1e-3 * (hi - lo)
    outside = float(((x < lo - margin) | (x > hi + margin)).float().mean())
    found = f"{float(x.min()):.3g}..{float(x.max()):.3g}"
    where = f"{outside:.1%} of the module's output values on 16 random latents fall outside {lo:g}..{hi:g}"
    fix = f"pass the range its images are in, e.g. --value-range {_suggest(float(x.min()), float(x.max()))}"
    if outside > RANGE_REFUSE:
        raise UserError(f"--value-range {lo:g},{hi:g}: {where} (measured {found}); {fix}")
    if float(x.max() - x.min()) < RANGE_SPAN * (hi - lo):  # [0, 1] images declared 0..255: grey levels 0 and 1
        raise UserError(f"--value-range {lo:g},{hi:g}: the module's output values on 16 random latents span only "
                        f"{found}, under {RANGE_SPAN:.0%} of that range; {fix}")
    if outside > RANGE_WARN:
        log(f"warning: {where} (measured {found}); they are clipped in uint8 images")


def _suggest(lo: float, hi: float) -> str:
    for a, b in ((0.0, 1.0), (-1.0, 1.0), (0.0, 255.0)):  # the usual ranges, narrowest first
        if a - 0.05 * (b - a) <= lo and hi <= b + 0.05 * (b - a):
            return f"{a:g},{b:g}"
    return f"{lo:.3g},{hi:.3g}"


def _state_digest(module: nn.Module) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes), for modules given without a weights file."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


# ---- what the CLI reads: the user's module, their weights ---------------------------------------------------


def import_object(spec: str):
    """'pkg.module:Name' -> the object, imported from the path the user typed (the working folder first)."""
    match = re.fullmatch(r"([A-Za-z_][\w.]*):([A-Za-z_]\w*)", spec or "")
    if match is None:
        raise UserError(f"--module {spec!r}: expected PACKAGE.MODULE:NAME, e.g. mynets:Generator")
    module_name, attr = match.groups()
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as uvicorn does: `mynets` is mynets.py in the working folder
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and not module_name.startswith(e.name) and not e.name.startswith(module_name):
            raise UserError(f"--module {spec}: importing {module_name} needs {e.name}, which is not installed "
                            f"here; pip install it (or the package that provides it)") from None
        raise UserError(f"--module {spec}: cannot import {module_name} ({e}); run from the folder that holds it or "
                        f"put it on PYTHONPATH") from None
    except (Exception, SystemExit) as e:  # the user's code ran and failed (or exited): contained, in one line
        raise UserError(f"--module {spec}: importing {module_name} failed: {cause(e)}") from None
    if not hasattr(module, attr):
        raise UserError(f"--module {spec}: {module_name} has no {attr}")
    return getattr(module, attr)


def build_module(spec: str) -> nn.Module:
    """NAME is a class or a function returning the module; it is called with no arguments."""
    factory = import_object(spec)
    try:
        module = factory()
    except TypeError as e:
        raise UserError(f"--module {spec}: calling {spec.split(':')[1]}() failed ({e}); point --module at a "
                        f"function that builds the module with its arguments") from None
    except (Exception, SystemExit) as e:
        raise UserError(f"--module {spec}: calling {spec.split(':')[1]}() failed: {cause(e)}") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"--module {spec}: {spec.split(':')[1]}() returned {type(module).__name__}, not an nn.Module")
    return module


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors, or from .pth/.pt with torch.load(weights_only=True): a pickled whole module
    is refused before any of its code can run."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise UserError(f"--weights {path}: not a readable safetensors file ({e})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for pickled objects; RuntimeError for damaged files
        first = first_line(e)
        if "Unsupported global" in str(e) or "weights_only" in str(e).lower():
            raise UserError(f"--weights {path} holds pickled Python objects (a whole module?), not a state_dict; "
                            f"nothing in it was run. Save the weights with torch.save(netG.state_dict(), "
                            f"'netG.pth') and pass that") from None
        raise UserError(f"--weights {path}: unreadable ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--weights {path} holds a {type(state).__name__}, not a state_dict of tensors; save "
                        f"torch.save(netG.state_dict(), 'netG.pth')")
    return state


def unwrap(state: dict) -> dict:
    """Keys saved from nn.DataParallel / DistributedDataParallel carry a `module.` prefix: drop it."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(module: nn.Module, state: dict, what: str, log=print) -> None:
    """Strict load with one line naming the first key or shape that differs, and a warning line when tensors are
    cast to the module's dtypes (int64 or bool weights for float parameters are a sign of the wrong file)."""
    state = unwrap(state)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if missing or extra:
        first = f"{missing[0]!r} is missing" if missing else f"{extra[0]!r} is not in the module"
        raise UserError(f"{what}: the weights do not fit: {first} ({len(missing)} missing, {len(extra)} unexpected)")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise UserError(f"{what}: the weights do not fit: {key!r} has shape {tuple(state[key].shape)}, the "
                            f"module wants {tuple(value.shape)}")
    casts = [f"{key!r} {str(state[key].dtype).removeprefix('torch.')} -> {str(value.dtype).removeprefix('torch.')}"
             for key, value in own.items() if state[key].dtype != value.dtype]
    if casts:
        log(f"warning: {what}: {len(casts)} tensor(s) cast to the module's dtype ({', '.join(casts[:3])}"
            f"{', ...' if len(casts) > 3 else ''})")
    module.load_state_dict(state)


# ---- the PyTorch DCGAN tutorial ------------------------------------------------------------------------------


def dcgan_tutorial(state: dict, log=print) -> tuple[nn.Module, dict]:
    """The PyTorch DCGAN tutorial's generator from its state_dict alone: nz, ngf and nc come from the weights'
    shapes. gandeploy's own DCGAN family at 64x64 with width ngf is the same network layer for layer (the
    tutorial's `main.i` is our `net.i`), so the weights load into it and the export carries a generator folder
    that the torch backend, `gandeploy sample` and everything else use as for our own runs."""
    from ..nets import build_generator

    what = "--arch dcgan-tutorial"
    state = unwrap(state)
    first, last = state.get("main.0.weight"), state.get("main.12.weight")
    if first is None or last is None or first.ndim != 4 or last.ndim != 4:
        missing = "main.0.weight" if first is None or first.ndim != 4 else "main.12.weight"
        raise UserError(f"{what}: {missing!r} is missing or not a convolution weight, so this is not the DCGAN "
                        f"tutorial's generator; export your own architecture with --module")
    nz, ngf, nc = int(first.shape[0]), int(last.shape[0]), int(last.shape[1])
    config = {"family": "dcgan", "latent_dim": nz, "resolution": 64, "channels": nc, "width": ngf,
              "num_classes": 0, "embed_dim": 32, "value_range": [-1.0, 1.0]}
    model = build_generator(config)
    tutorial = nn.Module()
    tutorial.main = model.net  # the tutorial's names over our layers: loading one loads the other
    load_weights(tutorial, state, f"{what} (nz={nz}, ngf={ngf}, nc={nc})", log)
    return model.eval(), config


ARCHITECTURES = {"dcgan-tutorial": dcgan_tutorial}


def export_files(weights: str | Path, out: str | Path | None = None, *, module: str | None = None,
                 arch: str | None = None, latent_dim: int | None = None, latent_shape=None, value_range=None,
                 num_classes: int = 0, options: ExportOptions | None = None, log=print) -> Path:
    """What `gandeploy export --module/--arch --weights` does: build, load the weights, export, check."""
    import tempfile

    from ..artifacts import save_generator

    if (module is None) == (arch is None):
        raise UserError("pass one of --module PKG.MOD:NAME or --arch dcgan-tutorial, with --weights FILE")
    weights = Path(weights)
    state = load_state_dict(weights)
    out = Path(out) if out is not None else Path("exports") / _safe_name(weights.stem)
    origin = {"weights": weights.name, "weights_sha256": sha256(weights)}
    if arch is not None:
        if arch not in ARCHITECTURES:
            raise UserError(f"--arch {arch!r}: known architectures are {', '.join(ARCHITECTURES)}")
        if latent_dim is not None or latent_shape is not None or value_range is not None or num_classes:
            raise UserError(f"--arch {arch} reads its latent size from the weights; leave out --latent-dim, "
                            f"--latent-shape, --value-range and --classes")
        generator, config = ARCHITECTURES[arch](state, log)
        options = options or ExportOptions()
        options.check()
        require_onnx_stack()
        with tempfile.TemporaryDirectory() as tmp:  # the generator folder that travels with the export
            folder = save_generator(Path(tmp) / "generator", generator, config)
            return write_export(generator, config, out.name, out, options, {"arch": arch, **origin}, folder, log)
    if latent_dim is None:
        raise UserError("--latent-dim is required with --module (the size of z the export takes)")
    _check_latents(latent_dim, latent_shape)  # sizes first: before the user's code runs or anything is allocated
    _check_classes(num_classes)
    built = build_module(module)
    load_weights(built, state, f"--weights {weights.name} for {module}", log)
    return export_module(built, out, latent_dim=latent_dim, latent_shape=latent_shape,
                         value_range=value_range if value_range is not None else (-1.0, 1.0),
                         num_classes=num_classes, options=options, name=out.name,
                         origin={"module": module, **origin}, log=log)


def _safe_name(text: str) -> str:
    """A folder name from a file name: letters, digits, '.', '_' and '-' only."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return name or "generator"
