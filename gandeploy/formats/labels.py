"""Class labels for conditional generators: the one check every entry point (Sampler, CLI, HTTP) goes through."""

from __future__ import annotations

import re

import numpy as np

from ..errors import UserError


_INTEGER = re.compile(r"-?[0-9]{1,20}")


class LabelError(UserError):
    """Labels that do not fit the generator; the message names the problem and the fix."""


def parse_labels(text: str | None):
    """'3' -> 3, '1,2,3' -> [1, 2, 3], None -> None: text from a command line or a query string."""
    if text is None:
        return None
    parts = [v.strip() for v in str(text).split(",")]  # spaces after commas are fine
    if not all(_INTEGER.fullmatch(v) for v in parts):  # int() would also take '٣', '1_0' and 5,000 digits
        raise LabelError(f"{str(text)[:60]!r} is not an integer or a comma list of them")
    values = [int(v) for v in parts]
    return values[0] if len(values) == 1 else values


def default_labels(n: int, classes: int, start: int = 0) -> np.ndarray:
    """The one default for conditional generators everywhere (Sampler, sample, generate, serve v1): image k gets
    label k % classes, so any n images cover the classes evenly."""
    return np.arange(start, start + n, dtype=np.int64) % classes


def check_labels(labels, n: int, classes: int) -> np.ndarray | None:
    """labels as the backends take them (int64 (n,)), or None for an unconditional generator; a conditional
    generator's missing labels are `default_labels`."""
    if not classes:
        if labels is not None:
            raise LabelError("this generator is unconditional; pass no labels")
        return None
    if labels is None:
        return default_labels(n, classes)
    try:
        array = np.asarray(labels)
    except (ValueError, TypeError, RecursionError):  # ragged or deeply nested lists
        raise LabelError("labels must be one int or a flat list of ints") from None
    if array.dtype.kind not in "iu":
        raise LabelError(f"labels must be integers, got {array.dtype}")
    if array.ndim == 0:
        array = np.full(n, int(array))
    if array.shape != (n,):
        raise LabelError(f"labels has shape {array.shape}; expected one int or ({n},)")
    if array.min() < 0 or array.max() >= classes:
        bad = array[(array < 0) | (array >= classes)][0]
        raise LabelError(f"label {bad} is out of range; this generator has classes 0..{classes - 1}")
    return array.astype(np.int64)
