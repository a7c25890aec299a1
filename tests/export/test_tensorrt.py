"""TensorRT builder (gandeploy.export.tensorrt), backend (gandeploy.runtime.backends.tensorrt) and engine file names
(gandeploy.formats.engines). The pure parts run everywhere; building and running engines needs tensorrt, cuda-python
and a CUDA GPU (marked gpu, skipped with the reason availability() gives)."""

import ast
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gandeploy.errors import UserError
from gandeploy.export.tensorrt import (
    EngineMismatch,
    TensorRTUnavailable,
    availability,
    build_engine,
    check_operators,
    engine_filename,
    fp16_layer_count,
    load_engine,
    parser_error_message,
    run_engine,
    timing_cache_path,
    unsupported_ops,
    uses_strongly_typed,
)
from gandeploy.formats.engines import built_for
from gandeploy.runtime.backends import BackendUnavailable, Source
from gandeploy.runtime.backends import tensorrt as backend
from gandeploy.runtime.backends.tensorrt import TensorRTBackend, gpu_info, version_tuple

REASON = availability()
needs_trt = pytest.mark.skipif(REASON is not None, reason=REASON or "")
ROOT = Path(__file__).resolve().parents[2]


# ---- pure functions ---------------------------------------------------------------------------------------------


def test_engine_filename_slugs_the_gpu_and_names_everything_it_was_built_for():
    assert (engine_filename("NVIDIA H100 80GB HBM3", (9, 0), "10.13.3", "fp16")
            == "generator.nvidia-h100-80gb-hbm3.sm90.trt10.13.3.fp16.plan")
    assert (engine_filename("  NVIDIA GeForce RTX 4090 (Laptop)/Max-Q ", (8, 9), "11.0.0.7", "fp32")
            == "generator.nvidia-geforce-rtx-4090-laptop-max-q.sm89.trt11.0.0.7.fp32.plan")
    with pytest.raises(UserError, match="precision"):
        engine_filename("NVIDIA A100", (8, 0), "10.13.3", "int8")


def test_built_for_reads_engine_file_names_back():
    name = engine_filename("NVIDIA L4", (8, 9), "10.9.0.34", "fp16")
    assert built_for(Path("/exports/x") / name) == "TensorRT 10.9.0.34 on nvidia-l4 (sm89)"
    assert built_for(Path("model.plan")) == "another TensorRT version or GPU"


@pytest.mark.parametrize("version, expected", [("10.0.1", (10, 0)), ("10.13.3.9", (10, 13)), (" 11.1.0", (11, 1)),
                                               ("10.16.0.0.post1", (10, 16))])
def test_version_tuple_reads_major_and_minor(version, expected):
    assert version_tuple(version) == expected


def test_version_tuple_refuses_what_is_not_a_version():
    with pytest.raises(ValueError, match="not a TensorRT version"):
        version_tuple("unknown")


@pytest.mark.parametrize("version, expected", [("10.0.1", False), ("10.11.0", False), ("10.12.0", True),
                                               ("10.13.3", True), ("10.16.1", True), ("11.0.0", True)])
def test_uses_strongly_typed_from_10_12(version, expected):
    assert uses_strongly_typed(version) is expected


# Layer records as the 10.x inspector writes them with ProfilingVerbosity.DETAILED (the layout Polygraphy's
# `inspect model` and NVIDIA's sampleEditableTimingCache README show): tensors carry "Format/Datatype".
FP32_LOOKALIKES_10X = {"Layers": [
    {"Name": "/net/to_fp16_scale/Conv", "LayerType": "CaskConvolution",
     "Inputs": [{"Name": "z_fp16_named", "Location": "Device", "Dimensions": [-1, 8, 4, 4],
                 "Format/Datatype": "Row major linear FP32 format"}],
     "Outputs": [{"Name": "/net/half/out", "Location": "Device", "Dimensions": [-1, 3, 8, 8],
                  "Format/Datatype": "Float"}],
     "ParameterType": "Convolution", "Kernel": [4, 4], "Weights": {"Type": "Float", "Count": 384},
     "TacticName": "sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64",
     "TacticValue": "0x0f16a2c1f16e0f16", "StreamId": 0, "Metadata": "[ONNX Layer: /net/to_fp16/Conv]"},
    {"Name": "/net/up/Resize", "LayerType": "Resize",
     "Inputs": [{"Name": "/net/half/out", "Dimensions": [-1, 3, 8, 8], "Format/Datatype": "Float"}],
     "Outputs": [{"Name": "/net/up/out", "Dimensions": [-1, 3, 16, 16], "Format/Datatype": "Float"}],
     "ParameterType": "Resize", "ResizeMode": "LINEAR", "CoordinateTransformation": "kHALF_PIXEL",
     "TacticName": "__myl_ResHalf_0xf16c5d2e", "TacticValue": "0x00000000000003e8", "StreamId": 0},
    {"Name": "bf16_gemm", "LayerType": "gemm",
     "Inputs": [{"Name": "a", "Format/Datatype": "BFloat16"}],
     "Outputs": [{"Name": "b", "Format/Datatype": "Row major linear BF16 format"}],
     "TacticName": "sm90_xmma_gemm_bf16bf16_bf16f32"},
    "a bare layer name: the engine was not built with DETAILED verbosity",
]}
HALF_10X = {"Layers": [
    {"Name": "Reformatting CopyNode for Input Tensor 0 to /net/Conv", "LayerType": "Reformat",
     "Inputs": [{"Name": "z", "Dimensions": [-1, 8, 4, 4], "Format/Datatype": "Row major linear FP32 format"}],
     "Outputs": [{"Name": "z_h", "Dimensions": [-1, 8, 4, 4],
                  "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
    {"Name": "__myl_CastAddTanh_myl0_3", "LayerType": "kgen",
     "Inputs": [{"Name": "x", "Dimensions": [-1, 3, 8, 8], "Format/Datatype": "Half"}],
     "Outputs": [{"Name": "images", "Dimensions": [-1, 3, 8, 8], "Format/Datatype": "Float"}],
     "TacticName": "__myl_CastAddTanh_0x9c2e"},
]}
# 11.x: the engine's "Bindings" became "I/O Tensors" with "DataType" and a per-profile "Format"; layer tensors are
# read through the same keys.
LAYOUT_11X = {"I/O Tensors": [
    {"Name": "z", "IOMode": "Input", "DataType": "Float", "Dimensions": [-1, 8, 4, 4], "Location": "Device",
     "IsShapeInferenceIO": False,
     "ProfileInfo": [{"MinShape": [1, 8, 4, 4], "OptShape": [2, 8, 4, 4], "MaxShape": [8, 8, 4, 4],
                      "Format": "Row major linear FP32 format (kLINEAR)"}]}],
    "Layers": [
        {"Name": "/net/Conv", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "z", "Dimensions": [-1, 8, 4, 4], "DataType": "Float",
                     "Format": "Row major linear FP32 format (kLINEAR)"}],
         "Outputs": [{"Name": "c", "Dimensions": [-1, 3, 8, 8], "DataType": "Half",
                      "Format": "Row major linear FP16 format (kLINEAR)"}]},
        {"Name": "/net/Tanh", "LayerType": "PointWiseV2",
         "Inputs": [{"Name": "c", "DataType": "Float", "Format": "Row major linear FP32 format (kLINEAR)"}],
         "Outputs": [{"Name": "images", "DataType": "Float", "Format": "Row major linear FP32 format (kLINEAR)"}],
         "TacticName": "sm100_f16_pointwise_kHALF_PIXEL", "TacticValue": "0xf16f16"},
    ]}


def test_fp16_layer_count_ignores_names_tactics_hex_and_enums_that_look_like_fp16():
    assert fp16_layer_count(FP32_LOOKALIKES_10X) == 0
    assert fp16_layer_count({"Layers": ["conv", "relu"]}) == 0
    assert fp16_layer_count({}) == 0


def test_fp16_layer_count_counts_layers_with_half_tensors_in_10x_and_11x_layouts():
    assert fp16_layer_count(HALF_10X) == 2
    assert fp16_layer_count(LAYOUT_11X) == 1  # the I/O Tensors are not layers
    both = {"Layers": FP32_LOOKALIKES_10X["Layers"] + HALF_10X["Layers"]}
    assert fp16_layer_count(both) == 2


def test_timing_cache_file_is_keyed_by_gpu_capability_and_tensorrt_version(tmp_path):
    path = timing_cache_path(tmp_path / ".trt-timing-cache", "NVIDIA H100 80GB HBM3", (9, 0), "10.13.3.9")
    assert path == tmp_path / ".trt-timing-cache" / "timing.nvidia-h100-80gb-hbm3.sm90.trt10.13.3.9.cache"
    others = {timing_cache_path(tmp_path, *key) for key in [("NVIDIA H100 80GB HBM3", (9, 0), "10.13.3.9"),
                                                            ("NVIDIA H100 PCIe", (9, 0), "10.13.3.9"),
                                                            ("NVIDIA H100 80GB HBM3", (9, 0), "11.0.0"),
                                                            ("NVIDIA A100-SXM4-80GB", (8, 0), "10.13.3.9")]}
    assert len(others) == 4


def test_parser_error_message_is_one_line_with_node_and_operator():
    errors = [  # str(parser.get_error(i)) in 10.x and 11.x
        ("In node 7 with name: /net/Resize and operator: Resize (importResize): UNSUPPORTED_NODE: Assertion failed:\n"
         "    scales must be constant"),
        "In node 9 with name: /net/Cast and operator: Cast (parseNode): INVALID_NODE: unsupported type",
    ]
    message = parser_error_message(Path("/x/generator.fp16.onnx"), "10.13.3", errors)
    assert "\n" not in message
    assert message.startswith("TensorRT 10.13.3 could not parse generator.fp16.onnx: In node 7 with name: "
                              "/net/Resize and operator: Resize")
    assert "Assertion failed: scales must be constant; In node 9" in message
    many = parser_error_message("m.onnx", "10.0.1", [f"In node {i} with name: n{i} and operator: Op" for i in range(5)])
    assert many.endswith("(and 2 more)") and "n3" not in many
    assert parser_error_message("m.onnx", "11.0.0", []).endswith("the parser gave no error message")


def test_no_tensorrt_module_imports_tensorrt_cuda_python_or_torch_at_the_top():
    packages = [ROOT / "gandeploy/export/tensorrt", ROOT / "gandeploy/runtime/backends/tensorrt"]
    assert all((p / "__init__.py").is_file() for p in packages)
    for module in [*(m for p in packages for m in sorted(p.glob("*.py"))), ROOT / "gandeploy/formats/engines.py"]:
        tree = ast.parse(module.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom) and not n.level}
        assert not names & {"tensorrt", "cuda", "torch", "polygraphy"}, (module, names)


def test_backend_module_imports_and_explains_without_tensorrt_cuda_python_and_torch():
    code = ("import sys\n"
            "for m in ('tensorrt', 'cuda', 'torch'): sys.modules[m] = None\n"
            "from gandeploy.runtime.backends import tensorrt as t\n"
            "reason = t.availability()\n"
            "assert reason and 'tensorrt' in reason and 'cuda-python' in reason, reason\n"
            "assert \"pip install 'gandeploy[gpu]'\" in reason and '\\n' not in reason, reason\n"
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_availability_says_in_one_line_what_is_missing_here():
    if REASON is None:
        pytest.skip("tensorrt, cuda-python and a CUDA GPU are all here")
    assert REASON.strip() and "\n" not in REASON
    assert REASON.startswith("TensorRT needs ")
    assert "pip install 'gandeploy[gpu]'" in REASON or "NVIDIA GPU" in REASON


def test_everything_that_needs_tensorrt_fails_first_with_that_reason(tmp_path):
    if REASON is None:
        pytest.skip("tensorrt, cuda-python and a CUDA GPU are all here")
    # nothing exists and the arguments are bad too: the missing TensorRT/GPU must be what is reported
    with pytest.raises(TensorRTUnavailable) as caught:
        build_engine(tmp_path / "missing.onnx", None, tmp_path / "out", shapes={}, precision="int8")
    assert str(caught.value) == REASON
    assert not (tmp_path / "out").exists()
    calls = [lambda: load_engine(tmp_path / "missing.plan"), lambda: run_engine(None, {}), lambda: gpu_info(0),
             lambda: TensorRTBackend(tmp_path / "missing.plan", {}, "cuda")]
    for call in calls:
        with pytest.raises(TensorRTUnavailable, match="^TensorRT needs "):
            call()
    assert issubclass(TensorRTUnavailable, BackendUnavailable)  # the Sampler's auto mode moves on past it


def _manifest(engines=(), kind="float"):
    return {"generator": {"latent_dim": 8}, "inputs": [{"name": "z", "dtype": "float32", "shape": [-1, 8]}],
            "output": {"name": "images", "dtype": "float32", "shape": [-1, 3, 8, 8], "kind": kind},
            "batch": {"min": 1, "opt": 2, "max": 8}, "engines": list(engines)}


def test_loader_names_the_missing_engine_before_anything_else(tmp_path):
    source = Source(tmp_path, _manifest(), {})
    with pytest.raises(BackendUnavailable,
                       match="has no fp32 TensorRT engine; build one with gandeploy export .* --trt --no-fp16"):
        backend.load(source, "cpu", "fp32")
    with pytest.raises(BackendUnavailable, match="needs an export folder"):
        backend.load(Source(tmp_path, None, {}), "cuda", "fp32")
    engine = {"file": engine_filename("NVIDIA L4", (8, 9), "10.13.3", "fp16"), "precision": "fp16",
              "tensorrt_version": "10.13.3", "compute_capability": "8.9"}
    with pytest.raises(BackendUnavailable, match="CUDA devices, not on cpu"):
        backend.load(Source(tmp_path, _manifest([engine]), {}), "cpu", "fp16")
    if REASON is not None:
        with pytest.raises(TensorRTUnavailable) as caught:
            backend.load(Source(tmp_path, _manifest([engine]), {}), "cuda", "fp16")
        assert str(caught.value) == REASON


# ---- which graphs TensorRT imports (static: no TensorRT needed) ------------------------------------------------


def _graph(nodes, inputs, outputs, initializers=(), opset=18):
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _value(name, dtype, shape):
    from onnx import helper

    return helper.make_tensor_value_info(name, dtype, shape)


def _ints(name, values):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _floats(name, values):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def _unsupported_cases():
    """(model, what the report must say): one thing TensorRT's table or importer refuses in each."""
    from onnx import TensorProto as T
    from onnx import helper

    x4 = [_value("x", T.FLOAT, ["n", 1, 4, 4])]
    y = lambda *shape: [_value("y", T.FLOAT, list(shape) or None)]  # noqa: E731
    return {
        "det": (_graph([helper.make_node("Reshape", ["x", "s"], ["m"], name="odd/Reshape"),
                        helper.make_node("Det", ["m"], ["y"], name="odd/Det")],
                       [_value("x", T.FLOAT, ["n", 16])], y("n"), [_ints("s", [-1, 4, 4])]),
                "Det (node 'odd/Det'): not in TensorRT's ONNX operator table"),
        "cubic": (_graph([helper.make_node("Resize", ["x", "", "k"], ["y"], name="up", mode="cubic")],
                         x4, y("n", 1, 8, 8), [_floats("k", [1, 1, 2, 2])]),
                  "Resize (node 'up'): mode 'cubic' (TensorRT: linear, nearest)"),
        "weights": (_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="dyn")],
                           x4 + [_value("w", T.FLOAT, [1, 1, 3, 3])], y("n", 1, 2, 2)),
                    "Conv (node 'dyn'): weights W computed at run time"),
        "uint8": (_graph([helper.make_node("Cast", ["x"], ["q"], name="to8", to=T.UINT8),
                          helper.make_node("Cast", ["q"], ["y"], name="back", to=T.FLOAT)], x4, y("n", 1, 4, 4)),
                  "Cast (node 'to8' and 1 more): UINT8 tensor 'q' inside the graph"),
        "int16": (_graph([helper.make_node("Cast", ["x"], ["y"], name="c16", to=T.INT16)],
                         x4, [_value("y", T.INT16, ["n", 1, 4, 4])]),
                  "Cast (node 'c16'): cast to INT16"),
        "rank9": (_graph([helper.make_node("Reshape", ["x", "s"], ["y"], name="r9")], x4, y(*[1] * 8 + ["n"]),
                         [_ints("s", [1] * 8 + [-1])]),
                  "Reshape (node 'r9'): rank-9 tensor 'y' (TensorRT tensors have at most 8 axes)"),
        "axes": (_graph([helper.make_node("ReduceMean", ["x", "a"], ["y"], name="mean")],
                        x4 + [_value("a", T.INT64, [1])], y()),
                 "ReduceMean (node 'mean'): axes computed at run time"),
        "custom": (_graph([helper.make_node("Fancy", ["x"], ["y"], name="f", domain="com.example")], x4,
                          y("n", 1, 4, 4)),
                   "Fancy (node 'f'): custom domain 'com.example'"),
        "opset": (_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], x4, y("n", 1, 4, 4), opset=8),
                  "opset 8 (TensorRT imports opset 9 to 24)"),
    }


@pytest.mark.parametrize("case", ["det", "cubic", "weights", "uint8", "int16", "rank9", "axes", "custom", "opset"])
def test_unsupported_operators_are_named_with_the_node(case, tmp_path):
    import onnx

    model, expected = _unsupported_cases()[case]
    problems = unsupported_ops(model)
    assert any(p.startswith(expected) for p in problems), problems
    onnx.save(model, tmp_path / "generator.onnx")
    assert unsupported_ops(tmp_path / "generator.onnx") == problems  # a path reads the same
    with pytest.raises(UserError) as caught:
        check_operators(tmp_path / "generator.onnx", "10.13.3")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("generator.onnx uses what TensorRT 10.13.3 cannot import: ")
    assert expected in message and message.endswith("(per onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15))")


def test_what_stylegan_needs_is_supported_rank6_constant_pad_and_constant_folded_weights():
    """Zero insertion as Reshape -> rank-6 constant Pad -> Reshape, and a ConvTranspose whose weights are a
    Transpose of an initializer: Pad is a fill-mode ISliceLayer of any rank up to 8 in TensorRT's importer, and
    weights computed from constants alone are build-time constants."""
    from onnx import TensorProto as T
    from onnx import helper

    nodes = [helper.make_node("Reshape", ["x", "s6"], ["a"], name="to6"),
             helper.make_node("Pad", ["a", "p"], ["b"], name="zeros", mode="constant"),
             helper.make_node("Reshape", ["b", "s4"], ["c"], name="to4"),
             helper.make_node("Transpose", ["w"], ["wt"], name="t", perm=[1, 0, 2, 3]),
             helper.make_node("ConvTranspose", ["c", "wt"], ["y"], name="up", strides=[2, 2])]
    model = _graph(nodes, [_value("x", T.FLOAT, ["n", 2, 4, 4])], [_value("y", T.FLOAT, ["n", 2, 17, 17])],
                   [_ints("s6", [-1, 2, 4, 1, 4, 1]), _ints("p", [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]),
                    _ints("s4", [-1, 2, 8, 8]), _floats("w", np.ones((2, 2, 3, 3)))])
    assert unsupported_ops(model) == []


def test_dcgan_exports_hold_only_operators_tensorrt_imports(exports):
    for folder in exports.values():
        for file in ("generator.onnx", "generator.fp16.onnx"):
            assert unsupported_ops(folder / file) == [], (folder.name, file)


def test_export_trt_refuses_an_unsupported_graph_before_tensorrt_parses_it(exports, tmp_path, monkeypatch):
    """`gandeploy export EXPORT --trt` checks the ONNX it would build from (the FP16 one on a strongly typed
    TensorRT) and stops with one line, exit 2, before the parser or the builder: here with TensorRT faked, as the
    check needs none of it."""
    import shutil
    import types

    import onnx

    from conftest import cli
    from gandeploy.export import tensorrt as trt_module
    from gandeploy.formats import manifest as mf

    folder = tmp_path / "export"
    shutil.copytree(exports["uint8"], folder)
    model, _ = _unsupported_cases()["det"]
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 16
    manifest = json.loads((folder / "manifest.json").read_text())
    for file in ("generator.onnx", "generator.fp16.onnx"):
        onnx.save(model, folder / file)
        manifest["artifacts"][file] = mf.describe(folder / file, precision=manifest["artifacts"][file]["precision"])
    (folder / "manifest.json").write_text(mf.dumps(manifest))
    monkeypatch.setattr(trt_module, "availability", lambda: None)
    monkeypatch.setattr(trt_module.build, "require", lambda: None)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.3"))
    for extra, file in (((), "generator.fp16.onnx"), (("--no-fp16",), "generator.onnx")):
        code, output = cli("export", str(folder), "--trt", *extra)
        assert code == 2 and len(output.strip().splitlines()) == 1, output
        assert f"{file} uses what TensorRT 10.13.3 cannot import: Det (node 'odd/Det')" in output, output
    assert json.loads((folder / "manifest.json").read_text())["engines"] == []
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp-engine")]


# ---- on a GPU with TensorRT and cuda-python ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A Linear + ConvTranspose2d + Tanh 'generator' z (n, 8) -> (n, 3, 8, 8) as FP32 ONNX (dynamic batch) and its
    FP16 twin with FP32 I/O."""
    import onnx
    import torch
    from onnxconverter_common import float16

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 128), torch.nn.Unflatten(1, (8, 4, 4)),
                                torch.nn.ConvTranspose2d(8, 3, 4, 2, 1), torch.nn.Tanh()).eval()
    folder = tmp_path_factory.mktemp("onnx")
    fp32, fp16 = folder / "generator.onnx", folder / "generator.fp16.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (torch.randn(2, 8),), fp32, dynamo=True, input_names=["z"], output_names=["images"],
                      dynamic_shapes=({0: batch},))
    onnx.save(float16.convert_float_to_float16(onnx.load(fp32), keep_io_types=True), fp16)
    return fp32, fp16


SHAPES = {"z": ((2, 8), (4, 8), (8, 8))}  # min 2: batches of 1 are padded


@pytest.fixture(scope="module")
def engines(tiny_onnx, tmp_path_factory):
    fp32, fp16 = tiny_onnx
    out = tmp_path_factory.mktemp("engines")
    built = {p: build_engine(fp32, fp16, out, shapes=SHAPES, precision=p, workspace_gib=1.0,
                             timing_cache=out / "timing") for p in ("fp32", "fp16")}
    return out, built


def _reference(onnx_path, z):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"z": z})[0]


def _z(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-3), ("fp16", 1e-2)])
def test_engine_matches_onnxruntime(tiny_onnx, engines, precision, tolerance):
    import tensorrt as trt

    out, built = engines
    meta = built[precision]
    name, capability = gpu_info(backend.current_device())
    assert meta["file"] == engine_filename(name, capability, trt.__version__, precision)
    assert meta["precision"] == precision and meta["tensorrt_version"] == trt.__version__
    assert meta["compute_capability"] == f"{capability[0]}.{capability[1]}"
    assert meta["strongly_typed"] == uses_strongly_typed(trt.__version__)
    assert meta["profile"] == {"z": {"min": [2, 8], "opt": [4, 8], "max": [8, 8]}}
    assert meta["layers"] > 0
    assert (meta["fp16_layers"] > 0) == (precision == "fp16")
    data = (out / meta["file"]).read_bytes()
    assert meta["size"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
    cache = timing_cache_path(out / "timing", name, capability, trt.__version__)
    assert cache.stat().st_size > 0 and (out / "timing" / (cache.name + ".lock")).exists()

    engine = load_engine(out / meta["file"])  # the raw file deserializes: a plain plan, no header of ours
    for n in (2, 3, 8):
        z = _z(n, n)
        got = run_engine(engine, {"z": z})["images"]
        expected = _reference(tiny_onnx[0], z)
        assert got.shape == expected.shape == (n, 3, 8, 8) and got.dtype == np.float32
        assert float(np.abs(got - expected).max()) <= tolerance


@pytest.mark.gpu
@needs_trt
def test_a_second_build_merges_into_the_timing_cache(tiny_onnx, engines):
    import tensorrt as trt

    out, _ = engines
    name, capability = gpu_info(backend.current_device())
    cache = timing_cache_path(out / "timing", name, capability, trt.__version__)
    before = cache.stat().st_size
    build_engine(tiny_onnx[0], tiny_onnx[1], out / "again", shapes={"z": ((1, 8), (16, 8), (32, 8))},
                 precision="fp32", workspace_gib=1.0, timing_cache=out / "timing")
    assert cache.stat().st_size >= before  # merged, not replaced by the second build's timings alone


@pytest.mark.gpu
@needs_trt
def test_backend_pads_below_the_profile_minimum_and_matches_onnxruntime(tiny_onnx, engines):
    import tensorrt as trt

    out, built = engines
    manifest = _manifest([built["fp32"]])
    manifest["batch"] = {"min": 2, "opt": 4, "max": 8}
    sampler_backend = TensorRTBackend(out / built["fp32"]["file"], manifest, "cuda", streams=2)
    try:
        assert sampler_backend.kinds == ("float",) and sampler_backend.provider.startswith("TensorRT ")
        assert all(s.context.nvtx_verbosity == trt.ProfilingVerbosity.NONE for s in sampler_backend.slots)
        big = _z(8, 1)
        sampler_backend.run(big, None, "float")  # leaves rows 1.. of the buffers holding this batch's latents
        for n in (1, 2, 5, 8):
            z = _z(n, 10 + n)
            got = sampler_backend.run(z, None, "float")
            assert got.shape == (n, 3, 8, 8)
            assert float(np.abs(got - _reference(tiny_onnx[0], z)).max()) <= 1e-3
    finally:
        sampler_backend.close()


@pytest.mark.gpu
@needs_trt
def test_backend_refuses_an_engine_that_is_not_what_the_manifest_declares(engines):
    out, built = engines
    manifest = _manifest([built["fp32"]], kind="uint8")
    manifest["output"]["dtype"] = "uint8"
    with pytest.raises(BackendUnavailable, match="manifest declares") as caught:
        TensorRTBackend(out / built["fp32"]["file"], manifest, "cuda")
    assert "\n" not in str(caught.value)


@pytest.mark.gpu
@needs_trt
def test_loader_prefers_the_engine_built_for_this_machine(tmp_path, engines):
    out, built = engines
    stale = {**built["fp32"], "file": "generator.other.sm70.trt9.0.fp32.plan", "tensorrt_version": "9.0",
             "compute_capability": "7.0"}
    loaded = backend.load(Source(out, _manifest([built["fp32"], stale]), {}), "cuda", "fp32", streams=1)
    try:
        assert loaded.run(_z(3), None, "float").shape == (3, 3, 8, 8)
    finally:
        loaded.close()


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
        build_engine(tiny_onnx[0], None, tmp_path, shapes={"z": ((1, 8),) * 3}, precision="fp16")


@pytest.mark.gpu
@needs_trt
def test_a_legacy_timing_cache_file_is_refused_with_the_fix(tiny_onnx, tmp_path):
    (tmp_path / ".trt-timing-cache").write_bytes(b"old single-file cache")
    with pytest.raises(UserError, match="delete it"):
        build_engine(tiny_onnx[0], tiny_onnx[1], tmp_path, shapes=SHAPES, precision="fp32",
                     timing_cache=tmp_path / ".trt-timing-cache")


@pytest.mark.gpu
@needs_trt
@pytest.mark.parametrize("name", ["ada_skip64", "sg3_t64"])
def test_stylegan_engines_reproduce_nvidias_images(tmp_path, name):
    """`export --stylegan --trt` of a golden fixture: the FP16 engine (and an FP32 one added after) run through the
    Sampler give NVIDIA's images for the same z (fp32 as close as ONNX Runtime, fp16 at least 40 dB), and verify
    passes on every backend, TensorRT included."""
    import nvidia_layout as nv
    from conftest import cli
    from gandeploy import Sampler
    from gandeploy.formats.parity import compare

    if not (nv.DATA / f"{name}.safetensors").is_file():
        pytest.skip(f"golden fixture {name} is not in tests/data/stylegan")
    pkl = nv.write_fixture_pickle(name, tmp_path / f"{name}.pkl")
    out = tmp_path / name
    code, output = cli("export", "--stylegan", str(pkl), "--psi", "0.7", "--noise", "const", "--out", str(out),
                       "--output", "float", "--opt-batch", "4", "--max-batch", "8", "--trt")
    assert code == 0, output
    code, output = cli("export", str(out), "--trt", "--no-fp16")
    assert code == 0, output
    golden = nv.fixture(name)[2]
    z, expected = golden["z"], golden["psi0.7_const"]
    scale = float(np.abs(expected).max())
    for precision in ("fp32", "fp16"):
        with Sampler(out, backend="tensorrt", device="cuda", precision=precision) as sampler:
            for n in (1, 3, 8):
                rows = np.arange(n) % len(z)
                got = sampler.run(z[rows])
                assert got.shape == expected[rows].shape and got.dtype == np.float32
                figures = compare(expected[rows], got, "float")
                if precision == "fp32":
                    assert figures["max_abs_err"] <= 1e-3 * scale + 1e-4, (n, figures)
                else:
                    assert figures["psnr_db"] is None or figures["psnr_db"] >= 39.0, (n, figures)
    code, output = cli("verify", str(out))
    assert code == 0 and "FAILED" not in output and "tensorrt" in output, output
