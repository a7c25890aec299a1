"""Reference outputs: what PyTorch FP32 made of fixed latents at export time, stored in the export (reference.npz,
no pickle) so any machine can check its backends against them without torch (`gandeploy verify`)."""

from __future__ import annotations

import math
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArtifactError
from .latents import latents
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
        arrays = _read_npz(path, _expected(manifest))
    except ArtifactError:  # already one line (ArtifactError is a ValueError too)
        raise
    except _DAMAGE as e:  # bytes zipfile or numpy's header parser cannot make sense of
        raise _bad(path, f"not a readable .npz ({type(e).__name__}: {e})") from None
    return References(arrays["z"], arrays.get("labels"), arrays["images"], manifest["output"]["kind"])


# ---- reading reference.npz with bounds: every size is checked against the manifest before anything is read -------

# what zipfile raises on damaged bytes (RuntimeError: an encrypted member)
_DAMAGE = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError,
           zlib.error)
_DEFLATE_RATIO = 1032  # deflate's best case: a member declaring more than this per compressed byte is a zip bomb


def _bad(path: Path, problem: str) -> ArtifactError:
    problem = " ".join(problem.split())  # one line, whatever the file's bytes put into a message
    problem = problem if len(problem) <= 300 else problem[:300] + "..."
    return ArtifactError(f"{path}: {problem}; re-export it (`gandeploy export`)")


def _expected(manifest: dict) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Member name -> (shape, dtype) the manifest implies; labels only for conditional generators."""
    g, n = manifest["generator"], manifest["references"]["count"]
    image = {"uint8": np.uint8, "float": np.float32}[manifest["output"]["kind"]]
    want = {"z": ((n, g["latent_dim"]), np.dtype(np.float32)),
            "images": ((n, *manifest["output"]["shape"][1:]), np.dtype(image))}
    if g["num_classes"]:
        want["labels"] = ((n,), np.dtype(np.int64))
    return want


def _read_npz(path: Path, want: dict) -> dict[str, np.ndarray]:
    """np.load with the checks np.load leaves out: exactly the members we wrote, each .npy header read and checked
    (dtype, shape, declared sizes) before its data is read, so a damaged file costs no more memory than a good one."""
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        expected = sorted(f"{key}.npy" for key in want)
        if sorted(names) != expected:  # missing, extra, duplicated or not .npy
            shown = ", ".join(repr(name) for name in names[:6]) + (", ..." if len(names) > 6 else "")
            raise _bad(path, f"holds [{shown}], expected {', '.join(expected)}")
        return {key: _read_member(path, archive, key, size, *want[key]) for key in want}


def _read_member(path: Path, archive: zipfile.ZipFile, key: str, size: int, shape: tuple, dtype: np.dtype):
    info = archive.getinfo(f"{key}.npy")
    nbytes = math.prod(shape) * dtype.itemsize
    stored = info.compress_type == zipfile.ZIP_STORED
    if not stored and info.compress_type != zipfile.ZIP_DEFLATED:
        raise _bad(path, f"{info.filename} uses compression method {info.compress_type}; np.savez writes stored "
                         f"or deflated members")
    # the zip's own size fields: a member cannot be larger than the file, nor expand beyond what deflate can
    if info.compress_size > size or info.file_size > (info.compress_size if stored else
                                                      info.compress_size * _DEFLATE_RATIO + 64):
        raise _bad(path, f"{info.filename} declares {info.file_size} bytes from {info.compress_size} stored, in "
                         f"a {size}-byte file")
    with archive.open(info) as f:  # numpy reads at most 10,000 bytes of header text (max_header_size)
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise _bad(path, f"{info.filename} is .npy format {version}, expected 1.0 or 2.0")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        try:
            with warnings.catch_warnings():  # ast's SyntaxWarnings on hostile text would be lines of their own
                warnings.simplefilter("ignore")
                got_shape, fortran, got_dtype = read(f)
        except Exception as e:  # numpy's header parser (ast, tokenize) raises many kinds on hostile text
            raise _bad(path, f"{info.filename} has an unreadable header ({type(e).__name__}: {e})") from None
        if got_dtype != dtype or got_shape != shape:  # before any allocation: an object or a 10^13-element header
            raise _bad(path, f"{key} is {got_dtype}{got_shape}, the manifest says {dtype}{shape}")
        if info.file_size != f.tell() + nbytes:
            raise _bad(path, f"{info.filename} declares {info.file_size} bytes, its header {f.tell() + nbytes}")
        data = f.read(nbytes)
        if len(data) != nbytes or f.read(1):  # reading to the end also checks the member's CRC
            raise _bad(path, f"{info.filename} holds {len(data)} bytes of data, expected {nbytes}")
    return np.frombuffer(bytearray(data), dtype).reshape(shape, order="F" if fortran else "C")
