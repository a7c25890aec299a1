"""The run-time vocabulary every entry point shares (CLI choices, the Sampler, serve, generate, verify, Triton and
the manifest validator): what a precision is and what a seed is. Its neighbours: the labels rule (formats/labels.py)
and the latents (formats/latents.py). Plain Python."""

from __future__ import annotations

import numbers

from ..errors import UserError

PRECISIONS = ("fp32", "fp16")  # fp16: the FP16 ONNX twin, or an FP16 engine
SEED_BOUND = 2**64  # seeds are 0 .. 2**64 - 1: the Philox key of gandeploy.latents


def check_precision(value, what: str = "precision") -> str:
    if value not in PRECISIONS:
        raise UserError(f"{what} {value!r} is not one of {', '.join(PRECISIONS)}")
    return value


def seed_problem(value) -> str | None:
    """Why `value` is not a seed, or None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < SEED_BOUND:
        return f"seed must be an integer in [0, 2**64), got {str(value)[:40] if isinstance(value, int) else value!r}"
    return None


def check_seed(value, what: str = "--seed") -> int:
    problem = seed_problem(value)
    if problem is not None:
        raise UserError(f"{what}: {problem}")
    return int(value)
