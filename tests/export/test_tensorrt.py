"""TensorRT backend. The pure parts run everywhere; building and running engines needs tensorrt and a CUDA GPU
(marked gpu, skipped with the reason availability() gives)."""

import hashlib

import numpy as np
import pytest
import torch

from gandeploy.errors import UserError
from gandeploy.export.tensorrt import (EngineMismatch, TensorRTUnavailable, availability, build_engine,
                                       engine_filename, fp16_layer_count, load_engine, run_engine,
                                       uses_strongly_typed)

REASON = availability()
needs_trt = pytest.mark.skipif(REASON is not None, reason=REASON or "")


# ---- pure functions ---------------------------------------------------------------------------------------------


def test_engine_filename_slugs_the_gpu_and_names_everything_it_was_built_for():
    assert (engine_filename("NVIDIA H100 80GB HBM3", (9, 0), "10.13.3", "fp16")
            == "generator.nvidia-h100-80gb-hbm3.sm90.trt10.13.3.fp16.plan")
    assert (engine_filename("  NVIDIA GeForce RTX 4090 (Laptop)/Max-Q ", (8, 9), "11.0.0.7", "fp32")
            == "generator.nvidia-geforce-rtx-4090-laptop-max-q.sm89.trt11.0.0.7.fp32.plan")
    with pytest.raises(UserError, match="precision"):
        engine_filename("NVIDIA A100", (8, 0), "10.13.3", "int8")


@pytest.mark.parametrize("version, expected", [("10.0.1", False), ("10.11.0", False), ("10.12.0", True),
                                               ("10.13.3", True), ("11.0.0", True)])
def test_uses_strongly_typed_from_10_12(version, expected):
    assert uses_strongly_typed(version) is expected


def test_fp16_layer_count_reads_inspector_json_of_10x_and_11x():
    info = {"Layers": [
        {"Name": "cast_in", "Inputs": [{"Name": "z", "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "z_fp16", "Format/Datatype": "Row major linear FP16 format"}]},
        {"Name": "deconv", "Inputs": [{"Name": "z_fp16", "DataType": "Half"}],
         "Outputs": [{"Name": "y", "DataType": "Half"}]},
        {"Name": "fp16_named_but_float", "Outputs": [{"Name": "fp16_out", "Format/Datatype": "Float"}]},
        {"Name": "bf16", "Outputs": [{"Name": "b", "DataType": "BFloat16"}], "TacticName": "sm90_xmma_bf16bf16"},
        {"Name": "fused", "LayerType": "kgen", "Inputs": [{"Name": "z", "DataType": "Float"}],
         "Outputs": [{"Name": "y", "DataType": "Float"}], "TacticName": "sm90_xmma_fprop_f16f16_f16f32_f32"},
        {"Name": "tf32", "Outputs": [{"Name": "t", "DataType": "Float"}], "TacticName": "sm80_xmma_tf32f32_tf32f32",
         "Metadata": "[ONNX Layer: /to_fp16/half]"},
        "a layer name only (not DETAILED)",
    ]}
    assert fp16_layer_count(info) == 3
    assert fp16_layer_count({"Layers": ["conv", "relu"]}) == 0


def test_availability_says_in_one_line_what_is_missing_here():
    if REASON is None:
        pytest.skip("tensorrt and a CUDA GPU are both here")
    assert REASON.strip() and "\n" not in REASON
    assert "tensorrt" in REASON.lower() or "gpu" in REASON.lower()
    assert "pip install tensorrt-cu12" in REASON or "NVIDIA GPU" in REASON


def test_build_engine_without_tensorrt_fails_first_with_that_reason(tmp_path):
    if REASON is None:
        pytest.skip("tensorrt and a CUDA GPU are both here")
    # nothing exists and the arguments are bad too: the missing TensorRT/GPU must be what is reported
    with pytest.raises(TensorRTUnavailable) as caught:
        build_engine(tmp_path / "missing.onnx", None, tmp_path / "out", shapes={}, precision="int8")
    assert str(caught.value) == REASON
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(TensorRTUnavailable):
        load_engine(tmp_path / "missing.plan")


# ---- on a GPU with TensorRT -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A ConvTranspose2d + Tanh 'generator' as FP32 ONNX (dynamic batch) and its FP16 twin with FP32 I/O."""
    import onnx
    from onnxconverter_common import float16

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.ConvTranspose2d(8, 3, 4, 2, 1), torch.nn.Tanh()).eval()
    folder = tmp_path_factory.mktemp("onnx")
    fp32, fp16 = folder / "generator.onnx", folder / "generator.fp16.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (torch.randn(2, 8, 4, 4),), fp32, dynamo=True, input_names=["z"],
                      output_names=["images"], dynamic_shapes=({0: batch},))
    onnx.save(float16.convert_float_to_float16(onnx.load(fp32), keep_io_types=True), fp16)
    return fp32, fp16


@pytest.fixture(scope="module")
def engines(tiny_onnx, tmp_path_factory):
    fp32, fp16 = tiny_onnx
    out = tmp_path_factory.mktemp("engines")
    shapes = {"z": ((1, 8, 4, 4), (2, 8, 4, 4), (8, 8, 4, 4))}
    built = {p: build_engine(fp32, fp16, out, shapes=shapes, precision=p, workspace_gib=1.0,
                             timing_cache=out / "timing.cache") for p in ("fp32", "fp16")}
    return out, built


def _reference(onnx_path, z):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"z": z})[0]


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 1e-2)])
def test_engine_matches_onnxruntime(tiny_onnx, engines, precision, tolerance):
    import tensorrt as trt

    out, built = engines
    meta = built[precision]
    name, capability = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
    assert meta["file"] == engine_filename(name, capability, trt.__version__, precision)
    assert meta["precision"] == precision and meta["tensorrt_version"] == trt.__version__
    assert meta["strongly_typed"] == uses_strongly_typed(trt.__version__)
    assert meta["profile"] == {"z": {"min": [1, 8, 4, 4], "opt": [2, 8, 4, 4], "max": [8, 8, 4, 4]}}
    assert meta["layers"] > 0
    assert (meta["fp16_layers"] > 0) == (precision == "fp16")
    data = (out / meta["file"]).read_bytes()
    assert meta["size"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert (out / "timing.cache").stat().st_size > 0

    engine = load_engine(out / meta["file"])  # the raw file deserializes: a plain plan, no header of ours
    for n in (1, 2, 8):
        z = np.random.default_rng(n).standard_normal((n, 8, 4, 4)).astype(np.float32)
        got = run_engine(engine, {"z": z})["images"]
        expected = _reference(tiny_onnx[0], z)
        assert got.shape == expected.shape == (n, 3, 8, 8) and got.dtype == np.float32
        assert float(np.abs(got - expected).max()) <= tolerance


@pytest.mark.gpu
@needs_trt
def test_damaged_plan_raises_engine_mismatch(engines, tmp_path):
    out, built = engines
    name = built["fp32"]["file"]
    data = bytearray((out / name).read_bytes())
    data[:32] = bytes(32)  # the plan's header (magic tag, version) no longer reads
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(EngineMismatch, match="gandeploy export --trt") as caught:
        load_engine(tmp_path / name)
    assert "\n" not in str(caught.value) and name in str(caught.value)


@pytest.mark.gpu
@needs_trt
def test_fp16_on_strongly_typed_tensorrt_needs_the_fp16_onnx(tiny_onnx, tmp_path):
    import tensorrt as trt

    if not uses_strongly_typed(trt.__version__):
        pytest.skip(f"TensorRT {trt.__version__} builds FP16 from the FP32 ONNX")
    with pytest.raises(UserError, match="FP16 ONNX"):
        build_engine(tiny_onnx[0], None, tmp_path, shapes={"z": ((1, 8, 4, 4),) * 3}, precision="fp16")
