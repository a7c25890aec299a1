"""Float images to uint8, and sample grids as PNG: numpy and Pillow only (no torch, no torchvision).

`levels` is the one float -> uint8 arithmetic of the project. It takes a numpy array or a torch tensor (both spell
the same operators), so the exported ONNX graph, the torch backend (on its device) and the numpy path of the
Sampler all round the same way: round-half-to-even of (x - lo) * 255 / (hi - lo), clipped to 0..255.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from .files import atomic_path


def levels(x, value_range=(-1.0, 1.0)):
    """float (n, c, h, w) in value_range -> the same shape in float grey levels 0..255, rounded (numpy or torch)."""
    lo, hi = float(value_range[0]), float(value_range[1])
    return ((x - lo) * (255.0 / (hi - lo))).round().clip(0, 255)


def to_uint8(images: np.ndarray, value_range=(-1.0, 1.0)) -> np.ndarray:
    """float32 (n, c, h, w) in value_range -> uint8 (n, h, w, c)."""
    x = levels(np.asarray(images, dtype=np.float32), value_range)
    return np.ascontiguousarray(x.astype(np.uint8).transpose(0, 2, 3, 1))


def grid(images: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (n, h, w, c) -> one uint8 (H, W, c) picture, nrow images per row."""
    n, h, w, c = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    out = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for k in range(n):
        r, col = divmod(k, nrow)
        out[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[k]
    return out


def png(picture: np.ndarray, scale: int = 1) -> bytes:
    """uint8 (h, w, c) -> PNG bytes, each pixel enlarged to scale x scale."""
    from PIL import Image

    img = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def save_grid(images: np.ndarray, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    data = png(grid(images, nrow), scale)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
