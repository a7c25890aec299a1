"""TensorRT engine file names: what an engine was built for (GPU, compute capability, TensorRT version, precision)
is in its name, e.g. 'generator.nvidia-h100-80gb-hbm3.sm90.trt10.13.3.fp16.plan', so the plan itself stays the bare
serialized engine that trtexec and Triton load. Written by the builder (gandeploy.export.tensorrt), read back by the
TensorRT backend (gandeploy.runtime.backends.tensorrt). Plain Python: no TensorRT needed.
"""

from __future__ import annotations

import re
from pathlib import Path

from .vocabulary import check_precision
ENGINE_FILENAME = re.compile(r"^generator\.(?P<gpu>[a-z0-9-]+)\.sm(?P<sm>\d+)\.trt(?P<trt>[0-9a-z.]+?)\."
                             r"(?P<precision>fp16|fp32)\.plan$")


def gpu_slug(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3' (lower case, runs of other characters become '-')."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def version_slug(version: str) -> str:
    """'10.13.3' -> '10.13.3'; lower case, anything but digits, letters and dots becomes '-'."""
    return re.sub(r"[^0-9a-z.]+", "-", version.strip().lower()).strip("-.")


def engine_filename(gpu_name: str, compute_capability: tuple[int, int], trt_version: str, precision: str) -> str:
    """e.g. 'generator.nvidia-h100-80gb-hbm3.sm90.trt10.13.3.fp16.plan' (slugified GPU name, lower case)."""
    check_precision(precision)
    major, minor = compute_capability
    return (f"generator.{gpu_slug(gpu_name) or 'gpu'}.sm{int(major)}{int(minor)}.trt{version_slug(trt_version)}."
            f"{precision}.plan")


def built_for(path) -> str:
    """What an engine file was built for, read from its name where it follows engine_filename."""
    match = ENGINE_FILENAME.match(Path(path).name)
    if match is None:
        return "another TensorRT version or GPU"
    return f"TensorRT {match['trt']} on {match['gpu']} (sm{match['sm']})"
