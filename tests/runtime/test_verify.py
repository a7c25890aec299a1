"""`gandeploy verify`: every backend that runs here against the PyTorch FP32 outputs stored in the export."""

import io
import json
import shutil
import zipfile

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import cli
from gandeploy.formats.files import sha256
from gandeploy.formats.references import load_references, reference_inputs
from gandeploy.runtime.verify import verify


@pytest.mark.parametrize("kind", ["uint8", "float", "cond"])
def test_every_export_verifies(exports, kind):
    code, output = cli("verify", str(exports[kind]))
    assert code == 0, output
    for line in ("PASSED   onnxruntime fp32 on cpu", "PASSED   onnxruntime fp16 on cpu", "PASSED   torch fp32 on cpu"):
        assert line in output
    assert "FAILED" not in output and "checks passed" in output.splitlines()[-1]


def test_references_are_torch_fp32_of_fixed_latents(exports):
    from gandeploy.formats.manifest import load_export

    manifest = load_export(exports["cond"])
    refs = load_references(exports["cond"], manifest)
    z, labels = reference_inputs(manifest["generator"])
    np.testing.assert_array_equal(refs.z, z)
    np.testing.assert_array_equal(refs.labels, labels)
    assert refs.images.dtype == np.uint8 and refs.images.shape == (32, 28, 28, 1)
    assert manifest["artifacts"]["reference.npz"]["sha256"] == sha256(exports["cond"] / "reference.npz")


def _tamper(export, tmp_path):
    """A copy of the export whose ONNX weights were changed and re-hashed: every checksum still matches."""
    folder = tmp_path / "tampered"
    shutil.copytree(export, folder)
    model = onnx.load(str(folder / "generator.onnx"))
    weight = max(model.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest weight tensor
    array = numpy_helper.to_array(weight) * 1.5
    weight.CopyFrom(numpy_helper.from_array(array.astype(np.float32), weight.name))
    onnx.save(model, str(folder / "generator.onnx"))
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["artifacts"]["generator.onnx"]
    entry["size"], entry["sha256"] = (folder / "generator.onnx").stat().st_size, sha256(folder / "generator.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_changed_weights_fail_with_figures(exports, tmp_path):
    folder = _tamper(exports["uint8"], tmp_path)
    code, output = cli("verify", str(folder))
    assert code == 1, output
    failed = next(line for line in output.splitlines() if line.startswith("FAILED   onnxruntime fp32 on cpu"))
    assert "max |err|" in failed and "% of uint8 pixels differ" in failed and "max_abs_err <= 1 level" in failed
    assert "PASSED   torch fp32 on cpu" in output  # the PyTorch generator beside it was not touched
    checks = {(c.backend, c.precision): c for c in verify(folder, backend="onnxruntime", precision="fp32")}
    assert checks[("onnxruntime", "fp32")].parity.max_abs_err > 1


def test_bad_input_exits_2(exports, tmp_path):
    code, output = cli("verify", str(tmp_path / "nothing"))
    assert code == 2 and "not an export folder" in output
    code, output = cli("verify", str(exports["uint8"]), "--backend", "tflite")
    assert code == 2 and "'tflite' is not one of" in output
    code, output = cli("verify", str(exports["uint8"]), "--backend", "tensorrt")
    assert code == 2 and "error:" in output and "tensorrt" in output
    code, output = cli("verify", str(exports["uint8"]), "--precision", "fp8")
    assert code == 2 and "'fp8' is not one of fp32, fp16" in output
    # an export made before references existed: told to re-export, not a traceback
    old = tmp_path / "old"
    shutil.copytree(exports["uint8"], old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["references"], manifest["artifacts"]["reference.npz"]
    (old / "reference.npz").unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    code, output = cli("verify", str(old))
    assert code == 1 and "has no reference outputs (reference.npz); re-export" in output  # nothing to check: FAILED


def _npy(array, shape=None) -> bytes:
    """An .npy of `array`, or only a header claiming `shape` followed by `array`'s bytes."""
    data = io.BytesIO()
    if shape is None:
        np.lib.format.write_array(data, array, allow_pickle=True)
    else:
        np.lib.format.write_array_header_1_0(data, {"descr": array.dtype.str, "fortran_order": False, "shape": shape})
        data.write(array.tobytes())
    return data.getvalue()


def _damaged_reference(good: bytes, damage: str) -> bytes:
    with np.load(io.BytesIO(good)) as data:
        arrays = {f"{k}.npy": _npy(data[k]) for k in data.files}
        z = data["z"]
    if damage == "truncated":
        return good[: len(good) // 2]
    if damage == "garbage":
        return b"\x89PNG not an npz" * 50
    if damage == "huge header":
        arrays["z.npy"] = _npy(z, shape=(10**13,))
    elif damage == "wrong dtype":
        arrays["z.npy"] = _npy(z.view(np.int32))
    elif damage == "object array":
        arrays["z.npy"] = _npy(z.astype(object))
    elif damage == "extra member":
        arrays["payload.npy"] = _npy(np.zeros(3))
    elif damage == "missing member":
        del arrays["images.npy"]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, value in arrays.items():
            archive.writestr(name, value)
    return buffer.getvalue()


def _write_rehashed(folder, data: bytes) -> None:
    """reference.npz replaced and its manifest entry re-hashed: load_export's checksum passes, the reader decides."""
    (folder / "reference.npz").write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"]["reference.npz"].update(size=len(data), sha256=sha256(folder / "reference.npz"))
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "huge header", "wrong dtype", "object array",
                                    "extra member", "missing member"])
def test_a_damaged_reference_npz_fails_the_export_in_one_line(exports, tmp_path, damage):
    """The export's record of what it must produce is damaged: one FAILED line naming the file (exit 1), no
    traceback and no allocation sized by a damaged header."""
    folder = tmp_path / "export"
    shutil.copytree(exports["uint8"], folder)
    good = (folder / "reference.npz").read_bytes()
    _write_rehashed(folder, _damaged_reference(good, damage))
    args = ("verify", str(folder), "--backend", "onnxruntime", "--precision", "fp32")
    code, output = cli(*args)
    failed = [line for line in output.splitlines() if line.startswith("FAILED")]
    assert code == 1 and len(failed) == 1 and len(output.strip().splitlines()) <= 2, output
    assert "reference.npz: " in failed[0] and "re-export" in failed[0] and "Traceback" not in output, output
    _write_rehashed(folder, good)  # what a re-export brings back
    code, output = cli(*args)
    assert code == 0 and "PASSED   onnxruntime fp32 on cpu" in output, output
