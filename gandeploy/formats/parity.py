"""Paired parity, defined once: the same inputs through a reference and a candidate, the figures the design notes
name (max and mean absolute error, share of uint8 pixels that differ, PSNR) and the stated tolerances. Export, the
TensorRT build, `gandeploy verify` and the bench all judge through `measure`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

FLOAT_TOLERANCE = 1e-4  # max abs error of an FP32 backend against PyTorch FP32, float output
UINT8_TOLERANCE = 1  # grey levels, uint8 output
FP16_MIN_PSNR_DB = 40.0


def compare(reference: np.ndarray, output: np.ndarray, kind: str, value_range=(-1.0, 1.0)) -> dict:
    """Figures of one batch. kind "uint8": images (n, h, w, c); "float": (n, c, h, w) in value_range."""
    from .images import levels

    if reference.shape != output.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, output {output.shape}")
    if kind == "uint8":
        diff = np.abs(reference.astype(np.int16) - output.astype(np.int16))
        return {"max_abs_err": int(diff.max()), "mean_abs_err": float(diff.mean()),
                "uint8_differing": float((diff > 0).mean()), "psnr_db": _psnr(float((diff.astype(np.float64) ** 2)
                                                                                   .mean()), 255.0)}
    diff = np.abs(reference.astype(np.float64) - output.astype(np.float64))
    peak = float(value_range[1]) - float(value_range[0])
    moved = levels(reference.astype(np.float32), value_range) != levels(output.astype(np.float32), value_range)
    return {"max_abs_err": float(diff.max()), "mean_abs_err": float(diff.mean()),
            "uint8_differing": float(moved.mean()), "psnr_db": _psnr(float((diff**2).mean()), peak)}


def _psnr(mse: float, peak: float) -> float | None:
    """PSNR in dB; None when the outputs are identical (infinite PSNR has no JSON spelling)."""
    return None if mse == 0 else float(10 * np.log10(peak**2 / mse))


def tolerance(kind: str, precision: str) -> tuple[str, float]:
    """(figure, bound): FP32 within 1e-4 (float) or one level (uint8); FP16 at least 40 dB PSNR."""
    if precision == "fp16":
        return "psnr_db", FP16_MIN_PSNR_DB
    return "max_abs_err", float(UINT8_TOLERANCE if kind == "uint8" else FLOAT_TOLERANCE)


def tolerance_text(kind: str, precision: str) -> str:
    figure, bound = tolerance(kind, precision)
    if figure == "psnr_db":
        return f"psnr_db >= {bound:g}"
    return f"max_abs_err <= {bound:g}" + (" level" if kind == "uint8" else "")


@dataclass
class Parity:
    """Worst case over the batches compared (max errors, share differing, lowest PSNR), mean of means."""

    kind: str
    max_abs_err: float
    mean_abs_err: float
    uint8_differing: float
    psnr_db: float | None
    tolerance: str
    passed: bool
    per_batch: dict = field(default_factory=dict)

    def line(self) -> str:
        err = f"{self.max_abs_err:g} level(s)" if self.kind == "uint8" else f"{self.max_abs_err:.2e}"
        psnr = "identical" if self.psnr_db is None else f"PSNR {self.psnr_db:.1f} dB"
        return (f"max |err| {err}, mean |err| {self.mean_abs_err:.2e}, {100 * self.uint8_differing:.4g}% of uint8 "
                f"pixels differ, {psnr}")

    def verdict(self) -> str:
        return f"{'PASSED' if self.passed else 'FAILED'} ({self.tolerance})"

    def as_dict(self) -> dict:
        figures = asdict(self)
        figures.pop("kind")
        return figures


def measure(pairs, kind: str, precision: str, value_range=(-1.0, 1.0)) -> Parity:
    """pairs: (label, reference, output) per batch -> one Parity with the stated tolerance's verdict."""
    per_batch = {str(label): compare(ref, out, kind, value_range) for label, ref, out in pairs}
    if not per_batch:
        raise ValueError("nothing to compare")
    figures = list(per_batch.values())
    psnrs = [f["psnr_db"] for f in figures if f["psnr_db"] is not None]
    merged = {"max_abs_err": max(f["max_abs_err"] for f in figures),
              "mean_abs_err": float(np.mean([f["mean_abs_err"] for f in figures])),
              "uint8_differing": max(f["uint8_differing"] for f in figures),
              "psnr_db": min(psnrs) if psnrs else None}
    figure, bound = tolerance(kind, precision)
    if figure == "psnr_db":
        passed = merged["psnr_db"] is None or merged["psnr_db"] >= bound
    else:
        passed = merged["max_abs_err"] <= bound
    return Parity(kind=kind, **merged, tolerance=tolerance_text(kind, precision), passed=bool(passed),
                  per_batch=per_batch)
