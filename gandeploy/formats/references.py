"""Reference outputs: what PyTorch FP32 made of fixed latents at export time, stored in the export (reference.npz,
no pickle) so any machine can check its backends against them without torch (`gandeploy verify`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from ..latents import latents
from .manifest import REFERENCE_FILE

REFERENCE_SEED = 0
REFERENCE_COUNT = 32  # images 0..31 of seed 0


@dataclass
class References:
    z: np.ndarray  # float32 (n, latent_dim)
    labels: np.ndarray | None  # int64 (n,) for conditional generators
    images: np.ndarray  # the export's output kind: uint8 (n, h, w, c) or float32 (n, c, h, w)
    kind: str


def reference_inputs(config: dict, n: int = REFERENCE_COUNT, seed: int = REFERENCE_SEED):
    """(z, labels): images 0..n-1 of `seed`; conditional generators get label k % classes for image k."""
    labels = np.arange(n, dtype=np.int64) % config["num_classes"] if config["num_classes"] else None
    return latents(seed, n, config["latent_dim"], dist=config.get("latent_distribution")), labels


def save_references(path: Path, refs: References) -> None:
    arrays = {"z": refs.z, "images": refs.images}
    if refs.labels is not None:
        arrays["labels"] = refs.labels
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_references(folder: str | Path, manifest: dict) -> References:
    """The export's references (their checksum was checked by load_export), validated against the manifest."""
    entry = manifest.get("references")
    path = Path(folder) / REFERENCE_FILE
    if not entry or not path.is_file():
        raise ArtifactError(f"{folder} has no reference outputs ({REFERENCE_FILE}); re-export it with this gandeploy "
                            f"(`gandeploy export`) to verify it")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path} is unreadable ({e}); re-export") from None
    g, kind = manifest["generator"], manifest["output"]["kind"]
    n = entry["count"]
    shape = tuple(manifest["output"]["shape"][1:])
    want = {"z": ((n, g["latent_dim"]), np.float32), "images": ((n, *shape), np.dtype(manifest["output"]["dtype"]))}
    if g["num_classes"]:
        want["labels"] = ((n,), np.int64)
    for key, (wshape, wdtype) in want.items():
        got = arrays.get(key)
        if got is None or got.shape != wshape or got.dtype != wdtype:
            found = "missing" if got is None else f"{got.dtype}{got.shape}"
            raise ArtifactError(f"{path}: {key} is {found}, the manifest says {np.dtype(wdtype)}{wshape}; re-export")
    return References(arrays["z"], arrays.get("labels"), arrays["images"], kind)
