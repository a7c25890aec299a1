"""reference.npz read with bounds: any damage is one ArtifactError naming the file and saying to re-export, never a
traceback and never an allocation sized by a damaged header."""

import io
import struct
import zipfile

import numpy as np
import pytest

from gandeploy.errors import ArtifactError
from gandeploy.formats.references import References, load_references, save_references

N, LATENT = 4, 8


def manifest(kind="uint8", classes=0, count=N):
    shape = [None, 6, 6, 1] if kind == "uint8" else [None, 1, 6, 6]
    return {"references": {"file": "reference.npz", "count": count},
            "generator": {"latent_dim": LATENT, "num_classes": classes},
            "output": {"kind": kind, "dtype": "uint8" if kind == "uint8" else "float32", "shape": shape}}


def arrays(kind="uint8", classes=0):
    rng = np.random.default_rng(0)
    out = {"z": rng.standard_normal((N, LATENT), dtype=np.float32),
           "images": rng.integers(0, 256, (N, 6, 6, 1), dtype=np.uint8) if kind == "uint8" else
           rng.standard_normal((N, 1, 6, 6), dtype=np.float32)}
    if classes:
        out["labels"] = np.arange(N, dtype=np.int64) % classes
    return out


def npz(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    """An .npz of raw members: name -> array (written as .npy) or bytes (written as they are)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, value in members.items():
            if isinstance(value, np.ndarray):
                data = io.BytesIO()
                np.lib.format.write_array(data, value, allow_pickle=True)
                value = data.getvalue()
            archive.writestr(name, value)
    return buffer.getvalue()


def good(kind="uint8", classes=0, compression=zipfile.ZIP_STORED) -> bytes:
    return npz({f"{k}.npy": v for k, v in arrays(kind, classes).items()}, compression)


def load(tmp_path, data: bytes, **spec):
    (tmp_path / "reference.npz").write_bytes(data)
    return load_references(tmp_path, manifest(**spec))


def refused(tmp_path, data: bytes, **spec) -> str:
    with pytest.raises(ArtifactError) as info:
        load(tmp_path, data, **spec)
    message = str(info.value)
    assert "\n" not in message and "reference.npz" in message and "re-export" in message, message
    return message


@pytest.mark.parametrize("kind,classes", [("uint8", 0), ("float", 0), ("uint8", 10)])
def test_what_save_references_writes_loads_back(tmp_path, kind, classes):
    want = arrays(kind, classes)
    save_references(tmp_path / "reference.npz", References(want["z"], want.get("labels"), want["images"], kind))
    refs = load_references(tmp_path, manifest(kind, classes))
    for key, array in want.items():
        np.testing.assert_array_equal(getattr(refs, key), array)
        assert getattr(refs, key).dtype == array.dtype and getattr(refs, key).flags.writeable
    assert refs.kind == kind and (refs.labels is None) == (not classes)


def test_compressed_and_fortran_order_members_load(tmp_path):
    want = arrays()
    refs = load(tmp_path, good(compression=zipfile.ZIP_DEFLATED))
    np.testing.assert_array_equal(refs.images, want["images"])
    refs = load(tmp_path, npz({"z.npy": np.asfortranarray(want["z"]), "images.npy": want["images"]}))
    np.testing.assert_array_equal(refs.z, want["z"])


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_truncated_and_garbage_files(tmp_path, compression):
    data = good(compression=compression)
    for size in (0, 1, 22, 100, len(data) // 2, len(data) - 23, len(data) - 1):
        assert "reference.npz" in refused(tmp_path, data[:size])
    refused(tmp_path, b"not a zip at all\n" * 100)
    refused(tmp_path, np.random.default_rng(1).bytes(len(data)))


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_every_flipped_byte_loads_the_same_or_is_refused(tmp_path, compression):
    """Fuzz: one byte changed anywhere (three ways); the result is the original arrays (a byte zip does not read)
    or one line."""
    data, want = good(compression=compression), arrays()
    rng = np.random.default_rng(2)
    for position in [p for p in range(len(data)) for _ in range(3)]:
        damaged = bytearray(data)
        damaged[position] ^= int(rng.integers(1, 256))
        try:
            refs = load(tmp_path, bytes(damaged))
        except ArtifactError as e:
            assert "\n" not in str(e) and "re-export" in str(e)
            continue
        np.testing.assert_array_equal(refs.z, want["z"])
        np.testing.assert_array_equal(refs.images, want["images"])


def header_only(shape, descr="<f4", pad=0) -> bytes:
    """An .npy whose header claims `shape`, followed by `pad` bytes of data."""
    data = io.BytesIO()
    np.lib.format.write_array_header_1_0(data, {"descr": descr, "fortran_order": False, "shape": shape})
    return data.getvalue() + bytes(pad)


@pytest.mark.parametrize("shape", [(10**13,), (10**13, LATENT), (N, 10**12), (2**62, 2**62), (), (N * LATENT,),
                                   (LATENT, N), (N, LATENT, 1)])
def test_huge_or_wrong_header_shapes_are_refused_before_allocating(tmp_path, shape):
    # the member is exactly as long as a good z, so only the header's claim is wrong
    members = {"z.npy": header_only(shape, pad=N * LATENT * 4), "images.npy": arrays()["images"]}
    message = refused(tmp_path, npz(members))
    assert "z" in message


@pytest.mark.parametrize("key,array", [
    ("z", np.zeros((N, LATENT), np.float64)), ("z", np.zeros((N, LATENT), np.int32)),
    ("z", np.zeros((N, LATENT), ">f4")), ("z", np.zeros((N, LATENT), np.float16)),
    ("z", np.array([[object()] * LATENT] * N, dtype=object)), ("images", np.zeros((N, 6, 6, 1), np.float32)),
    ("images", np.zeros((N, 6, 6, 1), np.int8)), ("images", np.zeros((N, 6, 6), np.uint8)),
    ("images", np.zeros((N + 1, 6, 6, 1), np.uint8)), ("z", np.zeros((N, LATENT), [("a", "<f4")])),
])
def test_wrong_dtypes_shapes_and_object_arrays(tmp_path, key, array):
    members = {f"{k}.npy": v for k, v in arrays().items()}
    members[f"{key}.npy"] = array
    assert key in refused(tmp_path, npz(members))


def test_float_output_wants_float32_images(tmp_path):
    members = {f"{k}.npy": v for k, v in arrays("float").items()}
    members["images.npy"] = members["images.npy"].astype(np.float64)
    assert "images is float64" in refused(tmp_path, npz(members), kind="float")


def test_labels_are_int64_of_the_reference_count(tmp_path):
    members = {f"{k}.npy": v for k, v in arrays("uint8", 10).items()}
    members["labels.npy"] = members["labels.npy"].astype(np.int32)
    assert "labels is int32" in refused(tmp_path, npz(members), classes=10)
    members["labels.npy"] = np.zeros(N + 3, np.int64)
    assert "labels is int64" in refused(tmp_path, npz(members), classes=10)


def test_the_manifests_count_decides(tmp_path):
    assert "the manifest says float32(32, 8)" in refused(tmp_path, good(), count=32)


@pytest.mark.parametrize("change", ["missing", "extra", "not npy", "duplicate", "labels unconditional",
                                    "no labels conditional", "directory", "empty"])
def test_missing_extra_and_foreign_members(tmp_path, change):
    conditional = change == "no labels conditional"
    members = [(f"{k}.npy", v) for k, v in arrays().items()]
    if change == "missing":
        members = members[:1]
    elif change == "extra":
        members.append(("notes.npy", np.zeros(3)))
    elif change == "not npy":
        members[0] = ("z.txt", b"hello")
    elif change == "duplicate":
        members.append(members[0])
    elif change == "labels unconditional":
        members.append(("labels.npy", np.zeros(N, np.int64)))
    elif change == "directory":
        members.append(("z.npy/", b""))
    elif change == "empty":
        members = []
    buffer = io.BytesIO()
    with pytest.warns(UserWarning) if change == "duplicate" else _nothing():
        with zipfile.ZipFile(buffer, "w") as archive:
            for name, value in members:
                archive.writestr(name, value if isinstance(value, bytes) else _npy(value))
    assert "holds [" in refused(tmp_path, buffer.getvalue(), classes=10 if conditional else 0)


def _npy(array) -> bytes:
    data = io.BytesIO()
    np.lib.format.write_array(data, array)
    return data.getvalue()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _patch_central(data: bytes, offset: int, fmt: str, value) -> bytes:
    """Change one field of every central directory entry (offsets from the PK\\1\\2 signature)."""
    out, start = bytearray(data), 0
    while (start := data.find(b"PK\x01\x02", start)) != -1:
        struct.pack_into(fmt, out, start + offset, value)
        start += 4
    return bytes(out)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
@pytest.mark.parametrize("size", [2**32 - 1, 10**9, 0, 5])
def test_declared_member_sizes_are_sanity_checked(tmp_path, compression, size):
    data = good(compression=compression)
    refused(tmp_path, _patch_central(data, 24, "<I", size))  # uncompressed size
    refused(tmp_path, _patch_central(data, 20, "<I", size))  # compressed size


@pytest.mark.parametrize("method", [12, 14, 99])
def test_other_compression_methods_and_encryption_are_refused(tmp_path, method):
    refused(tmp_path, _patch_central(good(), 10, "<H", method))
    refused(tmp_path, _patch_central(good(), 8, "<H", 1))  # the encrypted flag


def test_a_version_3_or_unknown_npy_format_is_refused(tmp_path):
    z = _npy(arrays()["z"])
    members = {"z.npy": z[:6] + b"\x09\x00" + z[8:], "images.npy": arrays()["images"]}
    assert "format" in refused(tmp_path, npz(members))


@pytest.mark.parametrize("text", [
    "__import__('os').system('true')", "{b'descr': '<f4', 'fortran_order': False, 'shape': (4, 8)}", "(" * 5000,
    "[1, 2]", "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 8), 'more': 1}", "{'descr': '<f4'}",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (-4, -8)}",
    "{'descr': '<f4', 'fortran_order': 0, 'shape': (4.0, 8)}",
    "{'descr': 'O', 'fortran_order': False, 'shape': (4, 8)}", "{'descr': [('a', '<f4', (10**12,))], "
    "'fortran_order': False, 'shape': (4, 8)}", "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 8)}\x00\xff",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 1_0_0_0_0_0_0_0_0_0_0_0_0_0)}", "", "1e999999"])
def test_a_header_of_garbage_is_refused(tmp_path, text):
    """Header text written by hand (what numpy parses with ast), then as many data bytes as a good z has."""
    header = text.encode("latin1") + b" " * ((64 - (len(text) + 11) % 64) % 64) + b"\n"
    z = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(N * LATENT * 4)
    refused(tmp_path, npz({"z.npy": z, "images.npy": arrays()["images"]}))
