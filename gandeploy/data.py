"""Training data: the bundled MNIST digits, .npz arrays, image folders, and torchvision sets when it imports.

Arrays are kept in memory as uint8 (n, c, h, w) and indexed directly; image folders are decoded lazily by
DataLoader workers. Either way batch `i` of a run is a pure function of (seed, i), so a resumed run reads the same
images in the same order as one that never stopped.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError
from .recipe import DataConfig

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
CELEBA_HINT = ("CelebA: download img_align_celeba.zip from the CelebA site and unzip it so that "
               "data/celeba/img_align_celeba/000001.jpg exists")


@dataclass
class ImageData:
    images: torch.Tensor | None  # uint8 (n, c, h, w) in memory, or None for a lazy folder
    folder: "FolderDataset | None"
    labels: torch.Tensor | None  # int64 (n,), None for unconditional training
    num_classes: int
    description: str

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.folder)


def bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    with resources.files("gandeploy").joinpath("assets/mnist10k.npz").open("rb") as f:
        arrays = np.load(f, allow_pickle=False)
        return arrays["images"], arrays["labels"]


def load_data(cfg: DataConfig) -> ImageData:
    if cfg.source == "folder":
        folder = FolderDataset(cfg.path, cfg.resolution, cfg.channels, cfg.conditional, cfg.limit)
        labels = folder.labels if cfg.conditional else None
        return ImageData(None, folder, labels, len(folder.classes) if cfg.conditional else 0,
                         f"{len(folder)} images in {cfg.path}")
    if cfg.source == "mnist":
        images, labels = bundled_mnist()
        where = "bundled MNIST (10,000 digits)"
    elif cfg.source == "npz":
        images, labels = _load_npz(cfg.path, cfg.conditional)
        where = cfg.path
    else:
        images, labels = _load_torchvision(cfg)
        where = f"torchvision {cfg.name} in {cfg.path}"
    if cfg.limit:
        images, labels = images[: cfg.limit], (labels[: cfg.limit] if labels is not None else None)
    tensor = fit_images(_to_nchw(torch.from_numpy(np.ascontiguousarray(images))), cfg.resolution, cfg.channels)
    if not cfg.conditional:
        return ImageData(tensor, None, None, 0, f"{len(tensor)} images from {where}")
    if labels is None:
        raise DataError(f"data.conditional: {where} has no labels; add a `labels` array or set "
                        f"data.conditional=false")
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return ImageData(tensor, None, labels, int(labels.max()) + 1, f"{len(tensor)} labelled images from {where}")


def _load_npz(path: str, conditional: bool):
    file = Path(path)
    if not file.is_file():
        raise DataError(f"data.path: {file} not found; point it at an .npz file holding an `images` array")
    try:
        arrays = np.load(file, allow_pickle=False)
        images = arrays["images"]
        labels = arrays["labels"] if "labels" in arrays.files else None
    except KeyError:
        raise DataError(f"{file} has no `images` array (it has {', '.join(arrays.files)}); save the images "
                        f"under the key `images`") from None
    except (ValueError, OSError) as e:
        raise DataError(f"{file} is not a readable .npz file ({e})") from None
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise DataError(f"{file}: `images` must be uint8 (n, h, w) or (n, h, w, c), got {images.dtype} "
                        f"{images.shape}; convert with (x * 255).round().astype(np.uint8)")
    return images, labels


def _load_torchvision(cfg: DataConfig):
    try:
        import torchvision.datasets as tv
    except Exception as e:  # torchvision may be installed for another torch build and fail at import
        raise DataError(f"data.source=torchvision needs an importable torchvision ({type(e).__name__}: {e}); "
                        f"install the torchvision that matches your torch, or use data.source=folder or npz") from None
    cls = getattr(tv, cfg.name, None)
    if cls is None:
        raise DataError(f"data.name: torchvision has no data set {cfg.name!r}; e.g. MNIST, FashionMNIST, CIFAR10")
    try:
        dataset = cls(root=cfg.path, train=True, download=False)
    except TypeError:
        dataset = cls(root=cfg.path, download=False)
    except RuntimeError as e:
        raise DataError(f"torchvision {cfg.name} not found under {cfg.path} ({e}); download it there first") from None
    if not hasattr(dataset, "data"):
        raise DataError(f"torchvision {cfg.name} keeps no in-memory `data` array; save its images to a folder "
                        f"and use data.source=folder")
    labels = getattr(dataset, "targets", None)
    return np.asarray(dataset.data), (np.asarray(labels) if labels is not None else None)


def _to_nchw(images: torch.Tensor) -> torch.Tensor:
    if images.ndim == 3:
        return images[:, None]  # (n, 1, h, w)
    if images.shape[-1] in (1, 3, 4) and images.shape[1] not in (1, 3):
        return images.permute(0, 3, 1, 2)[:, :3].contiguous()  # (n, c, h, w), alpha dropped
    return images


def fit_images(images: torch.Tensor, resolution: int, channels: int) -> torch.Tensor:
    """uint8 (n, c, h, w) -> uint8 (n, channels, resolution, resolution): centre crop, antialiased resize."""
    h, w = images.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    images = images[..., top:top + side, left:left + side]
    if images.shape[1] != channels:
        if channels == 3:
            images = images.expand(-1, 3, -1, -1)
        else:  # ITU-R 601 luma, as PIL's convert("L")
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    if side != resolution:
        out = []
        for chunk in images.split(1024):
            x = F.interpolate(chunk.float(), size=(resolution, resolution), mode="bilinear", antialias=True,
                              align_corners=False)
            out.append(x.round().clamp(0, 255).to(torch.uint8))
        images = torch.cat(out)
    return images.contiguous()


class FolderDataset(torch.utils.data.Dataset):
    """Images found recursively under a folder, decoded with Pillow on demand.

    A file that fails to decode is reported on stderr once and replaced by the next readable image, so one bad
    JPEG in 200,000 does not end a run.
    """

    def __init__(self, root: str, resolution: int, channels: int, conditional: bool = False, limit=None):
        self.root = Path(root)
        if not self.root.is_dir():
            hint = CELEBA_HINT if "celeba" in str(root).lower() else "point data.path at a folder of .jpg/.png files"
            raise DataError(f"data.path: image folder {self.root} not found; {hint}")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            hint = CELEBA_HINT if "celeba" in str(root).lower() else "add .jpg or .png files (searched recursively)"
            raise DataError(f"data.path: no .jpg/.png images under {self.root}; {hint}")
        self.files = files[:limit] if limit else files
        self.resolution, self.channels = resolution, channels
        self.classes: list[str] = []
        self.labels = None
        if conditional:
            parts = [p.relative_to(self.root).parts for p in self.files]
            if any(len(p) < 2 for p in parts):
                raise DataError(f"data.conditional: {self.root} needs one sub-folder per class "
                                f"({self.root}/<class>/<image>.png), but it has images at its top level")
            self.classes = sorted({p[0] for p in parts})
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = torch.tensor([index[p[0]] for p in parts], dtype=torch.int64)
        self._reported: set[Path] = set()

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> torch.Tensor:
        """uint8 (c, res, res) of file `index`; raises OSError or ValueError if it cannot be decoded."""
        from PIL import Image

        with Image.open(self.files[index]) as img:
            img = img.convert("RGB" if self.channels == 3 else "L")
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side))
            img = img.resize((self.resolution, self.resolution), Image.BICUBIC, reducing_gap=None)
            array = np.asarray(img, dtype=np.uint8).reshape(self.resolution, self.resolution, self.channels)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def __getitem__(self, index: int):
        for attempt in range(len(self.files)):
            i = (index + attempt) % len(self.files)
            try:
                image = self.load(i)
            except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three on damaged files
                if self.files[i] not in self._reported:
                    self._reported.add(self.files[i])
                    print(f"warning: skipping unreadable image {self.files[i]} ({e})", file=sys.stderr)
                continue
            label = self.labels[index] if self.labels is not None else -1
            return image, label
        raise DataError(f"no readable image in {self.root}")


# ---- batches as a pure function of (seed, iteration) -----------------------------------------------------------


class BatchIndices:
    """Index batches for iterations start, start+1, ...: iteration i takes items [i*B, (i+1)*B) of an endless
    stream made of one seeded permutation per epoch. `rank` of `world` takes its own slice of each batch."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.rank, self.world = rank, world
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def batch(self, i: int) -> torch.Tensor:
        lo, hi = i * self.batch_size, (i + 1) * self.batch_size
        parts, pos = [], lo
        while pos < hi:
            epoch, offset = divmod(pos, self.n)
            take = min(hi - pos, self.n - offset)
            parts.append(self._perm(epoch)[offset:offset + take])
            pos += take
        idx = torch.cat(parts) if len(parts) > 1 else parts[0]
        per_rank = self.batch_size // self.world
        return idx[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        i = self.start
        while True:
            yield self.batch(i).tolist()
            i += 1


def batches(data: ImageData, batch_size: int, seed: int, start: int, device: torch.device,
            rank: int = 0, world: int = 1, workers: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Endless (images float (b, c, h, w) in [-1, 1], labels int64 (b,) or None) on `device`, from iteration
    `start` on."""
    indices = BatchIndices(len(data), batch_size, seed, start, rank, world)
    if data.images is not None:
        images = data.images.to(device) if device.type == "cuda" else data.images
        labels = data.labels.to(device) if data.labels is not None and device.type == "cuda" else data.labels
        for i in itertools.count(start):
            idx = indices.batch(i).to(images.device)
            yield _to_float(images[idx], device), (labels[idx] if labels is not None else None)
    else:
        loader = torch.utils.data.DataLoader(data.folder, batch_sampler=indices, num_workers=workers,
                                             pin_memory=device.type == "cuda", persistent_workers=workers > 0)
        for images, labels in loader:
            yield _to_float(images, device), (labels.to(device, non_blocking=True) if data.labels is not None else None)


def _to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    return images.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)
