"""`gandeploy verify`: every backend that runs here against the PyTorch FP32 outputs stored in the export."""

import json
import shutil

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
