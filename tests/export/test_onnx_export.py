"""Export of tiny trained generators: ONNX checked against PyTorch at several batch sizes, FP16, manifest, bad input."""

import json

import numpy as np
import onnx
import pytest
import torch

from conftest import cli
from gandeploy.artifacts import load_generator
from gandeploy.errors import ArtifactError
from gandeploy.export import ExportOptions, export, load_export
from gandeploy.export import onnx as ox
from gandeploy.formats.images import to_uint8
from gandeploy.latents import latents

CASES = [("uncond", "uint8"), ("uncond", "float"), ("cond", "uint8"), ("cond", "float")]


@pytest.fixture(scope="module")
def exports(tiny_run, tiny_conditional_run, tmp_path_factory):
    runs = {"uncond": tiny_run, "cond": tiny_conditional_run}
    root = tmp_path_factory.mktemp("exports")
    return {(kind, output): export(runs[kind], root / f"{kind}-{output}",
                                   ExportOptions(output=output, max_batch=64, opt_batch=16), log=lambda _: None)
            for kind, output in CASES}


def _feeds(config, n, seed):
    feeds = {"z": latents(seed, n, config["latent_dim"])}
    if config["num_classes"]:
        feeds["label"] = (np.arange(n) % config["num_classes"]).astype(np.int64)
    return feeds


@pytest.mark.parametrize("kind, output", CASES)
def test_export_matches_pytorch_at_every_batch_size(exports, tiny_run, tiny_conditional_run, kind, output):
    folder = exports[(kind, output)]
    manifest = load_export(folder)
    assert manifest["parity"]["onnxruntime_fp32"]["passed"] and manifest["parity"]["onnxruntime_fp16"]["passed"]
    assert manifest["parity"]["batch_sizes"] == [1, 7, 16, 64]
    generator, config = load_generator(tiny_run if kind == "uncond" else tiny_conditional_run)
    session = ox.session(folder / "generator.onnx")
    for n in (1, 2, 5, 64, 100):  # beyond the checked sizes too: the batch axis is dynamic
        feeds = _feeds(config, n, seed=n)
        got = session.run(None, feeds)[0]
        with torch.inference_mode():
            reference = generator(torch.from_numpy(feeds["z"]),
                                  torch.from_numpy(feeds["label"]) if "label" in feeds else None)
        if output == "uint8":
            assert got.dtype == np.uint8 and got.shape == (n, 28, 28, 1)
            # the fused post-processing agrees with the library's own conversion
            assert np.abs(got.astype(int) - to_uint8(reference.numpy()).astype(int)).max() <= 1
        else:
            assert got.dtype == np.float32 and got.shape == (n, 1, 28, 28)
            assert np.abs(got - reference.numpy()).max() <= 1e-4


@pytest.mark.parametrize("kind, output", CASES)
def test_every_export_verifies_itself(exports, kind, output):
    from gandeploy.runtime.verify import verify

    checks = verify(exports[(kind, output)])
    ran = {(c.backend, c.precision) for c in checks if c.parity is not None}
    assert ran == {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16")}
    assert all(c.parity.passed for c in checks if c.parity is not None), [c.line() for c in checks]


@pytest.mark.parametrize("kind, output", CASES)
def test_graph_contract(exports, kind, output):
    model = onnx.load(str(exports[(kind, output)] / "generator.onnx"))
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" not in ops  # folded
    names = [i.name for i in model.graph.input]
    assert names == (["z", "label"] if kind == "cond" else ["z"])
    z = model.graph.input[0].type.tensor_type
    assert z.elem_type == onnx.TensorProto.FLOAT and z.shape.dim[0].dim_param and z.shape.dim[1].dim_value == 16
    if kind == "cond":
        assert model.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    out = model.graph.output[0]
    assert out.name == "images"
    assert out.type.tensor_type.elem_type == (onnx.TensorProto.UINT8 if output == "uint8" else onnx.TensorProto.FLOAT)
    assert {o.version for o in model.opset_import if o.domain == ""} == {18}
    if output == "uint8":  # TensorRT takes UINT8 only as a network input or output: the Cast must come last
        for name in ("generator.onnx", "generator.fp16.onnx"):
            last = onnx.load(str(exports[(kind, output)] / name)).graph.node[-1]
            assert last.op_type == "Cast" and last.output[0] == "images", (name, last.op_type)
            assert onnx.helper.get_attribute_value(last.attribute[0]) == onnx.TensorProto.UINT8


def test_fp16_model_keeps_float32_io_and_stores_float16_weights(exports):
    folder = exports[("uncond", "float")]
    model = onnx.load(str(folder / "generator.fp16.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in model.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    parity = load_export(folder)["parity"]["onnxruntime_fp16"]
    assert parity["psnr_db"] >= 40 and 0 < parity["max_abs_err"] < 0.05
    assert "float32 after casts" in parity["note"]
    assert (folder / "generator.fp16.onnx").stat().st_size < 0.6 * (folder / "generator.onnx").stat().st_size


def test_manifest_round_trip_and_contents(exports):
    folder = exports[("cond", "uint8")]
    manifest = load_export(folder)
    assert manifest == json.loads((folder / "manifest.json").read_text())
    assert manifest["generator"]["num_classes"] == 10 and manifest["output"]["shape"] == ["batch", 28, 28, 1]
    assert manifest["batch"] == {"min": 1, "opt": 16, "max": 64}
    assert manifest["source"]["step"] == 4 and manifest["name"] == "cdcgan_mnist"
    assert set(manifest["versions"]) >= {"torch", "onnx", "onnxruntime", "gandeploy"}
    assert manifest["engines"] == []


def test_a_second_onnx_consumer_gives_the_same_numbers(exports):
    """onnx's own reference evaluator (a pure-Python ONNX runtime) runs the file unchanged."""
    from onnx.reference import ReferenceEvaluator

    folder = exports[("cond", "float")]
    config = load_export(folder)["generator"]
    feeds = _feeds(config, 3, seed=11)
    expected = ox.session(folder / "generator.onnx").run(None, feeds)[0]
    got = ReferenceEvaluator(str(folder / "generator.onnx")).run(None, feeds)[0]
    assert np.abs(got - expected).max() <= 1e-5


def test_openvino_reads_the_export_with_the_same_numbers(exports):
    ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    folder = exports[("uncond", "float")]
    config = load_export(folder)["generator"]
    feeds = _feeds(config, 4, seed=5)
    expected = ox.session(folder / "generator.onnx").run(None, feeds)[0]
    compiled = ov.Core().compile_model(str(folder / "generator.onnx"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled(feeds)[compiled.output(0)]
    assert np.abs(got - expected).max() <= 1e-4


# ---- bad input -------------------------------------------------------------------------------------------------


def _no_leftovers(parent):
    return not [p for p in parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_bad_generator_folders(tmp_path, tiny_run):
    code, output = cli("export", str(tmp_path / "missing"), "--out", str(tmp_path / "e"))
    assert code == 2 and output.startswith("error: ") and "does not exist" in output
    half = tmp_path / "half" / "generator"
    half.mkdir(parents=True)
    (half / "config.json").write_text((tiny_run / "generator" / "config.json").read_text())
    code, output = cli("export", str(tmp_path / "half"), "--out", str(tmp_path / "e"))
    assert code == 2 and "model.safetensors is missing" in output
    assert not (tmp_path / "e").exists() and _no_leftovers(tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--min-batch", "8", "--opt-batch", "4"], "min 8, opt 4, max 256 is out of order"),
    (["--opt-batch", "512"], "min 1, opt 512, max 256 is out of order"),
    (["--opset", "30"], "--opset 30: torch"),
    (["--opset", "3"], "--opset 3: ONNX opsets below 7"),
    (["--output", "png"], "--output png: expected one of uint8, float"),
])
def test_bad_export_options(tiny_run, tmp_path, args, message):
    code, output = cli("export", str(tiny_run), "--out", str(tmp_path / "e"), *args)
    assert code == 2 and output.count("\n") == 1 and message in output, output
    assert not (tmp_path / "e").exists() and _no_leftovers(tmp_path)


def test_damaged_exports_are_refused(exports, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(exports[("uncond", "uint8")], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(ArtifactError, match="schema_version 99; this gandeploy reads 1"):
        load_export(folder)
    code, output = cli("export", str(folder), "--trt")
    assert code == 2 and "schema_version 99" in output
    (folder / "manifest.json").write_text(json.dumps(manifest))
    onnx_file = folder / "generator.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:5000])
    with pytest.raises(ArtifactError, match="generator.onnx is truncated or changed"):
        load_export(folder)
    code, output = cli("export", str(folder), "--trt")
    assert code == 2 and "truncated" in output
    with pytest.raises(ArtifactError, match="not an export folder"):
        load_export(tmp_path)


def test_trt_without_tensorrt_fails_in_one_line_and_keeps_the_onnx_export(tiny_run, tmp_path):
    from gandeploy.export import tensorrt

    if tensorrt.availability() is None:
        pytest.skip("TensorRT and a GPU are available here: the GPU tests cover --trt")
    code, output = cli("export", str(tiny_run), "--trt", "--out", str(tmp_path / "e"), "--max-batch", "32",
                       "--opt-batch", "8")
    assert code != 0
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: --trt: ") and "the ONNX export in" in last
    manifest = load_export(tmp_path / "e")  # complete and valid
    assert manifest["engines"] == [] and manifest["parity"]["onnxruntime_fp32"]["passed"]


def test_export_cli_defaults_to_the_latest_run_and_exports_folder(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(tiny_run)
    code, output = cli("export", "--onnx", "--no-fp16", "--max-batch", "8", "--opt-batch", "4")
    assert code == 0, output
    assert "PASSED" in output and "FAILED" not in output
    manifest = load_export(tmp_path / "exports" / "dcgan_mnist")
    assert list(manifest["artifacts"]) == ["generator.onnx", "generator/config.json", "generator/model.safetensors",
                                          "reference.npz"]


def test_the_infogan_family_exports_and_verifies(tmp_path_factory, tmp_path):
    """Lucic et al.'s MNIST nets (fully connected layers with BatchNorm1d in G) through the same export and checks."""
    from conftest import _train_tiny

    from gandeploy.runtime.verify import verify

    run = _train_tiny(tmp_path_factory, "dcgan_mnist.yaml", "tiny_infogan", **{"model.name": "infogan"})
    folder = export(run, tmp_path / "infogan", ExportOptions(max_batch=16, opt_batch=4), log=lambda _: None)
    model = onnx.load(str(folder / "generator.onnx"))
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}  # folded into the Gemms too
    checks = verify(folder)
    assert all(c.parity.passed for c in checks if c.parity is not None), [c.line() for c in checks]
    generator, config = load_generator(run)
    feeds = _feeds(config, 5, seed=3)
    with torch.inference_mode():
        reference = to_uint8(generator(torch.from_numpy(feeds["z"])).numpy())
    got = ox.session(folder / "generator.onnx").run(None, feeds)[0]
    assert np.abs(got.astype(int) - reference.astype(int)).max() <= 1
