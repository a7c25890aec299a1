"""Float images to uint8 and sample grids as PNG (no torchvision needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from .artifacts import atomic_path


def to_uint8(images: torch.Tensor, value_range=(-1.0, 1.0)) -> np.ndarray:
    """float (n, c, h, w) in value_range -> uint8 (n, h, w, c), rounding to the nearest level."""
    lo, hi = value_range
    x = (images.detach().float() - lo) * (255.0 / (hi - lo))
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


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
    import io

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
