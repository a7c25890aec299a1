"""`gandeploy verify`: run every backend that loads here (or the one named) on the export's reference latents and
compare with the PyTorch FP32 outputs recorded at export time, with the export's tolerances. No torch needed:
this is how an engine is checked on the machine that will serve it (Polygraphy's --load-outputs is the model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError, BrokenArtifact, UserError
from ..formats.manifest import FP16_FILE, GENERATOR_DIR, load_export
from ..formats.parity import Parity, measure
from ..formats.references import load_references
from ..formats.vocabulary import PRECISIONS, check_precision
from . import backends
from .device import cuda_device_count, resolve_device
from .sampler import Sampler


@dataclass
class Check:
    backend: str
    precision: str
    device: str
    parity: Parity | None = None  # None: skipped
    reason: str = ""  # why it was skipped, or could not run
    provider: str = ""
    failed: bool = False  # could not run for a reason that fails the export here (an engine that does not load)

    @property
    def status(self) -> str:
        if self.parity is None:
            return "FAILED" if self.failed else "SKIPPED"
        return "PASSED" if self.parity.passed else "FAILED"

    def line(self) -> str:
        what = f"{self.backend} {self.precision} on {self.device}"
        if self.parity is None:
            return f"{self.status:<7}  {what}: {self.reason}"
        via = f" [{self.provider}]" if self.provider and self.provider != self.device else ""
        return f"{self.status:<7}  {what}{via}: {self.parity.line()} ({self.parity.tolerance})"


def _has(manifest: dict, backend: str, precision: str) -> bool:
    """Whether the export holds what this (backend, precision) runs, so absent artifacts are not listed at all."""
    if backend == "onnxruntime":
        return precision == "fp32" or FP16_FILE in manifest["artifacts"]
    if backend == "tensorrt":
        return any(e["precision"] == precision for e in manifest.get("engines", []))
    return f"{GENERATOR_DIR}/config.json" in manifest["artifacts"]  # torch: exports of a user's module have none


def verify(export_dir: str | Path, backend: str | None = None, precision: str | None = None,
           device: str = "auto") -> list[Check]:
    """One Check per (backend, precision, device) tried; a named backend that cannot run here raises UserError."""
    export_dir = Path(export_dir)
    manifest = load_export(export_dir)
    try:
        refs = load_references(export_dir, manifest)
    except ArtifactError as e:  # the export's own record of what it must produce is damaged: it fails
        raise BrokenArtifact(str(e)) from None
    if backend is not None and backend not in backends.REGISTRY:
        raise UserError(f"--backend {backend!r} is not one of {', '.join(backends.REGISTRY)}")
    if precision is not None:
        check_precision(precision, "--precision")
    if device == "auto":
        devices = ["cpu", "cuda"] if cuda_device_count() else ["cpu"]
    else:
        devices = [resolve_device(device, "--device")]
    checks = []
    if backend and not any(_has(manifest, backend, p) for p in PRECISIONS):
        raise UserError(f"{export_dir} has nothing {backend} runs" + (
            f"; add an engine with `gandeploy export {export_dir} --trt`" if backend == "tensorrt" else ""))
    for name in [backend] if backend else list(backends.REGISTRY):
        entry = backends.REGISTRY[name]
        for prec in [precision] if precision else PRECISIONS:
            if not _has(manifest, name, prec):
                if backend and precision:
                    raise UserError(f"{export_dir} has nothing for {name} {prec}; see `gandeploy export --help`")
                continue
            usable = [dev for dev in devices if dev.split(":")[0] in entry.devices]
            if not usable:
                if backend and device != "auto":
                    raise UserError(f"{name} runs on {' or '.join(entry.devices)}, not on {device}")
                checks.append(Check(name, prec, "/".join(entry.devices), reason=f"{name} needs a CUDA GPU and the "
                                    f"driver shows none here; run verify on the machine that will serve"))
                continue
            for dev in usable:
                # a backend that cannot run here is a SKIPPED line, unless both it and the device were named
                checks.append(_check(export_dir, refs, manifest, name, prec, dev,
                                     named=bool(backend) and device != "auto"))
    if not any(c.parity is not None or c.failed for c in checks):
        reasons = "; ".join(f"{c.backend} {c.precision}: {c.reason}" for c in checks) or "nothing matched"
        raise UserError(f"no backend could run {export_dir} here ({reasons})")
    return checks


def _check(export_dir, refs, manifest, name, precision, device, named: bool) -> Check:
    try:
        sampler = Sampler(export_dir, backend=name, device=device, precision=precision)
    except backends.BackendUnavailable as e:
        if named:
            raise
        return Check(name, precision, device, reason=str(e).splitlines()[0])
    except ArtifactError as e:  # a file that does not load, or an engine this TensorRT/GPU cannot: it fails here
        return Check(name, precision, device, reason=str(e).splitlines()[0], failed=True)
    with sampler:
        got = []
        start = 0
        for size in _chunks(len(refs.z), sampler.max_batch):  # several batch sizes: 1, an odd one, the rest
            labels = None if refs.labels is None else refs.labels[start:start + size]
            got.append(sampler.run(refs.z[start:start + size], labels))
            start += size
        output = np.concatenate(got)
        if output.shape != refs.images.shape or output.dtype != refs.images.dtype:
            raise UserError(f"{name} gave {output.dtype}{output.shape} for {refs.images.dtype}{refs.images.shape} "
                            f"references: {export_dir} does not describe its model; re-export")
        parity = measure([("references", refs.images, output)], refs.kind, precision,
                         manifest["generator"]["value_range"])
        return Check(name, precision, sampler.info["device"], parity, provider=str(sampler.info["provider"] or ""))


def _chunks(n: int, limit: int) -> list[int]:
    sizes, left = [], n
    for size in (1, 7):
        if left and size <= limit:
            take = min(size, left)
            sizes.append(take)
            left -= take
    while left:
        sizes.append(min(limit, left))
        left -= sizes[-1]
    return sizes
