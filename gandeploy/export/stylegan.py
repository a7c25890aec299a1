"""`gandeploy export --stylegan network.pkl`: NVIDIA's StyleGAN2/StyleGAN3 network pickles to checked ONNX.

The pickle is read by the restricted unpickler (network_pickle.py: nothing in it runs); the captured weights load
by name into gandeploy's own generator of the same family (nets/stylegan), which keeps the batch axis dynamic; the
usual export path does the rest (checks against PyTorch, FP16 twin, references, manifest with the origin)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch

from ..errors import UserError
from ..formats.files import sha256
from .exporter import ExportOptions, require_onnx_stack, write_export
from .module import _safe_name, load_weights
from .network_pickle import network, read_network_pickle

# A StyleGAN image costs 10-100x a DCGAN's: the export checks every batch size of the profile on the CPU, so the
# profile defaults stay small (a GPU user raises them with --opt-batch/--max-batch)
BATCHES = {"min_batch": 1, "opt_batch": 4, "max_batch": 16}


def export_stylegan(pickle_path: str | Path, out: str | Path | None = None, *, psi: float = 1.0,
                    cutoff: int | None = None, noise_mode: str = "const", network_name: str = "G_ema",
                    options: ExportOptions | None = None, log=print) -> Path:
    """Export one network of an NVIDIA network pickle (G_ema by default) into `out` (default exports/<file stem>);
    psi/cutoff: truncation toward w_avg (psi 1: none); noise_mode: 'const' (the stored noise) or 'none'."""
    from ..artifacts import save_generator
    from ..nets.stylegan import CLASSES, NOISE_MODES, StyleGAN

    options = options or ExportOptions(**BATCHES)
    options.check()
    require_onnx_stack()
    psi = _check_psi(psi)
    if noise_mode not in NOISE_MODES:
        raise UserError(f"--noise {noise_mode}: exports take {' or '.join(NOISE_MODES)} ('random' draws inside "
                        f"forward, which no export can repeat)")
    path = Path(pickle_path)
    captured = network(read_network_pickle(path), path, network_name)
    generator, class_name = _build(captured, path, network_name)
    family = CLASSES[class_name]
    num_ws = int(generator.num_ws)
    if cutoff is not None and (isinstance(cutoff, bool) or not isinstance(cutoff, int) or not 0 <= cutoff <= num_ws):
        raise UserError(f"--truncation-cutoff {cutoff}: this network has {num_ws} w vectors; pass 0..{num_ws}")
    model = StyleGAN(generator, psi, cutoff, noise_mode).eval()
    config = {"family": family, "latent_dim": int(generator.z_dim), "resolution": int(generator.img_resolution),
              "channels": int(generator.img_channels), "num_classes": int(generator.c_dim),
              "value_range": [-1.0, 1.0], "width": None, "embed_dim": None,
              "stylegan": {"class": class_name, "init_args": captured.init_args, "init_kwargs": captured.init_kwargs, "psi": psi,
                           "cutoff": cutoff, "noise_mode": noise_mode}}
    origin = {"format": "nvidia-network-pickle", "file": path.name, "sha256": sha256(path), "network": network_name,
              "family": family, "class": class_name, "classes": sorted(set(captured.classes().values())),
              "init_args": captured.init_args,
              "init_kwargs": captured.init_kwargs, "persistence_version": captured.persistence_version,
              "source_sha256": captured.source_sha256, "truncation_psi": psi, "truncation_cutoff": cutoff,
              "noise_mode": noise_mode}
    out = Path(out) if out is not None else Path("exports") / _safe_name(path.stem)
    with tempfile.TemporaryDirectory() as tmp:  # the generator folder that travels with the export
        folder = save_generator(Path(tmp) / "generator", model, config)
        return write_export(model, config, out.name, out, options, origin, folder, log)


def _check_psi(psi) -> float:
    try:
        value = float(psi)
    except (TypeError, ValueError):
        raise UserError(f"--psi {psi!r}: expected a number such as 0.7 (1: no truncation)") from None
    if not math.isfinite(value) or not -4.0 <= value <= 4.0:
        raise UserError(f"--psi {psi}: expected a finite number in -4..4, usually 0.5..1 (1: no truncation)")
    return value


def _build(captured, path: Path, name: str):
    """gandeploy's module for the captured network, its weights loaded by name; (module, NVIDIA class name)."""
    from ..nets.stylegan import build, nvidia_class

    class_name = nvidia_class(captured.classes(), captured.init_kwargs)
    if class_name is None:
        kinds = ", ".join(sorted(set(captured.classes().values())))
        raise UserError(f"{path}: {name} is a {captured.class_name} ({kinds}), not a StyleGAN2 or StyleGAN3 "
                        f"generator; export G_ema or G")
    try:
        generator = build(class_name, captured.init_args, captured.init_kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise UserError(f"{path}: {name}'s init arguments do not build a {class_name} here ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}); is it from a modified fork?") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in captured.state_dict().items()}
    load_weights(generator, state, f"{path} ({name}, {class_name})")
    return generator.eval(), class_name


def load_stylegan_module(pickle_path: str | Path, network_name: str = "G_ema") -> torch.nn.Module:
    """gandeploy's PyTorch module for a network pickle (no truncation wrapper): for benches and comparisons."""
    path = Path(pickle_path)
    return _build(network(read_network_pickle(path), path, network_name), path, network_name)[0]
