"""Triton model repositories written from tiny exports: the config parses with Triton's own schema and matches the
ONNX graph, ONNX Runtime runs the copied model with the shapes the config declares, and broken configs are refused
with one line naming the problem. Triton itself cannot run here (no GPU, no container)."""

import hashlib
import json
import shutil
import sys

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import triton_to_np_dtype

from conftest import cli

from gandeploy import Sampler
from gandeploy.errors import ArtifactError, UserError
from gandeploy.formats import manifest as mf
from gandeploy.export.tensorrt import engine_filename
from gandeploy.export.triton import check_model, write_repository
from gandeploy.latents import latents

quiet = lambda _: None  # noqa: E731
# per export: [(input, data type, dims)], (output data type, dims); Triton's dims leave out the batch axis
EXPECTED = {
    "uncond": ([("z", "TYPE_FP32", [16])], ("TYPE_UINT8", [28, 28, 1])),
    "cond": ([("z", "TYPE_FP32", [16]), ("label", "TYPE_INT64", [1])], ("TYPE_UINT8", [28, 28, 1])),
    "float": ([("z", "TYPE_FP32", [16])], ("TYPE_FP32", [1, 28, 28])),
}


@pytest.fixture(scope="module")
def exports(exports):  # the session's tiny exports (conftest.py), named as here; tests copy before they change one
    return {"uncond": exports["uint8"], "cond": exports["cond"], "float": exports["float"]}


@pytest.fixture(scope="module")
def repo(exports, tmp_path_factory):
    root = tmp_path_factory.mktemp("triton-repo")
    return {key: write_repository(folder, root, name=f"gen_{key}", log=quiet) for key, folder in exports.items()}


def parse(model_dir) -> pb.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())


def rewrite(model_dir, change) -> None:
    config = parse(model_dir)
    change(config)
    (model_dir / "config.pbtxt").write_text(text_format.MessageToString(config))


# ---- what is written --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", EXPECTED)
def test_config_round_trips_and_declares_the_graph(repo, exports, key):
    folder = repo[key]
    config = parse(folder)
    assert config == check_model(folder)
    assert text_format.MessageToString(config) == (folder / "config.pbtxt").read_text()  # written by the schema
    assert (config.name, config.platform, config.max_batch_size) == (f"gen_{key}", "onnxruntime_onnx", 64)
    inputs, (out_type, out_dims) = EXPECTED[key]
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in config.input] == inputs
    assert [(t.name, pb.DataType.Name(t.data_type), list(t.dims)) for t in config.output] == [
        ("images", out_type, out_dims)]
    for tensor in config.input:  # only the batch-only label is reshaped: (n, 1) on the wire, (n,) to the model
        assert tensor.HasField("reshape") == (tensor.name == "label")
        assert list(tensor.reshape.shape) == []
    assert list(config.dynamic_batching.preferred_batch_size) == [16, 64]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, pb.ModelInstanceGroup.KIND_GPU)]
    assert not config.HasField("optimization")
    assert (folder / "1" / "model.onnx").read_bytes() == (exports[key] / "generator.onnx").read_bytes()
    assert json.loads((folder / "gandeploy.json").read_text())["precision"] == "fp32"


def test_fp16_picks_the_fp16_onnx_and_sets_the_options(exports, tmp_path):
    folder = write_repository(exports["cond"], tmp_path, precision="fp16", instances=3, max_queue_delay_us=0,
                              tensorrt_accelerator=True, log=quiet)
    assert folder == tmp_path / "cdcgan_mnist"  # the export's name by default
    assert (folder / "1" / "model.onnx").read_bytes() == (exports["cond"] / "generator.fp16.onnx").read_bytes()
    config = check_model(folder)
    assert [(t.name, list(t.dims)) for t in config.input] == [("z", [16]), ("label", [1])]  # FP32 in, as fp32
    assert [(g.count, g.kind) for g in config.instance_group] == [(3, pb.ModelInstanceGroup.KIND_GPU)]
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert dict(accelerator.parameters) == {"precision_mode": "FP16", "max_workspace_size_bytes": str(1 << 30)}
    cpu = check_model(write_repository(exports["cond"], tmp_path, name="cpu", precision="fp16", kind="cpu", log=quiet))
    assert [(g.count, g.kind) for g in cpu.instance_group] == [(1, pb.ModelInstanceGroup.KIND_CPU)]


@pytest.mark.parametrize("key", EXPECTED)
@pytest.mark.parametrize("n", [5, 64])
def test_onnxruntime_runs_the_copied_model_with_the_declared_shapes(repo, exports, key, n):
    """What Triton would do with a request: tensors shaped (n, *dims) by the client, reshaped for the model."""
    config, seed = check_model(repo[key]), 11
    wire = {"z": latents(seed, n, 16), "label": (np.arange(n) % 10).astype(np.int64).reshape(n, 1)}
    feeds = {}
    for tensor in config.input:
        value = wire[tensor.name]
        assert value.shape == (n, *tensor.dims) and value.dtype == triton_to_np_dtype(
            pb.DataType.Name(tensor.data_type)[5:])
        feeds[tensor.name] = value.reshape(n, *tensor.reshape.shape) if tensor.HasField("reshape") else value
    session = ort.InferenceSession(str(repo[key] / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    [images] = session.run([config.output[0].name], feeds)
    assert images.shape == (n, *config.output[0].dims)
    assert images.dtype == triton_to_np_dtype(pb.DataType.Name(config.output[0].data_type)[5:])
    # the same images as the Sampler (and so `gandeploy serve`) gives for this seed
    with Sampler(exports[key], backend="onnxruntime") as sampler:
        labels = feeds.get("label")
        expected = sampler.generate(feeds["z"]) if key == "float" else sampler.sample(n, seed, labels=labels)
    np.testing.assert_array_equal(images, expected)


# ---- what check_model refuses ---------------------------------------------------------------------------------


def _set_dims(tensor, dims):
    del tensor.dims[:]
    tensor.dims.extend(dims)


def _cpu_with_accelerator(config):
    config.instance_group[0].kind = pb.ModelInstanceGroup.KIND_CPU
    config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")


BREAKAGES = {
    "input name": (lambda c: setattr(c.input[0], "name", "latent"), 'input "latent" is not in the model'),
    "input dims": (lambda c: _set_dims(c.input[0], [17]), r'input "z" gives the model dims \[17\].*set dims: \[16\]'),
    "label without reshape": (lambda c: c.input[1].ClearField("reshape"),
                              r'input "label" gives the model dims \[1\].*reshape \{ shape: \[ \] \}'),
    "output dims": (lambda c: _set_dims(c.output[0], [28, 28, 3]), r'output "images" gives the model dims \[28, 28, 3'),
    "empty dims": (lambda c: _set_dims(c.input[0], []), r'"z" has no dims'),
    "data type": (lambda c: setattr(c.output[0], "data_type", pb.TYPE_FP32),
                  'output "images" data_type TYPE_FP32: the model has uint8; set data_type: TYPE_UINT8'),
    "undeclared input": (lambda c: c.input.pop(), "input.s. label are not declared"),
    "preferred batch": (lambda c: c.dynamic_batching.preferred_batch_size.append(65),
                        r"preferred_batch_size 65 is outside 1..max_batch_size \(64\)"),
    "instance count": (lambda c: setattr(c.instance_group[0], "count", 0), r"instance_group\[0\] count 0"),
    "max batch": (lambda c: setattr(c, "max_batch_size", 0), "max_batch_size 0"),
    "platform": (lambda c: setattr(c, "platform", "pytorch_libtorch"), 'platform "pytorch_libtorch"'),
    "accelerator on cpu": (_cpu_with_accelerator, r"instance_group\[0\] is KIND_CPU but TensorRT runs on GPUs only"),
}


@pytest.fixture
def model_copy(repo, tmp_path):
    return shutil.copytree(repo["cond"], tmp_path / "gen_cond")


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_a_broken_config_is_refused_naming_the_field(model_copy, breakage):
    change, message = BREAKAGES[breakage]
    rewrite(model_copy, change)
    with pytest.raises(ArtifactError, match=message) as error:
        check_model(model_copy)
    assert str(error.value).startswith(str(model_copy / "config.pbtxt")) and "\n" not in str(error.value)


def test_a_syntax_error_names_the_file_and_line(model_copy):
    lines = (model_copy / "config.pbtxt").read_text().splitlines()
    broken = next(i for i, line in enumerate(lines) if 'name: "label"' in line)
    lines[broken] = lines[broken].replace('"label"', "label")  # an unquoted string
    (model_copy / "config.pbtxt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ArtifactError, match=rf"config.pbtxt, line {broken + 1}: .*; fix it") as error:
        check_model(model_copy)
    assert "\n" not in str(error.value)


def test_missing_files_and_a_renamed_folder_are_refused(model_copy):
    renamed = shutil.copytree(model_copy, model_copy.parent / "other")
    with pytest.raises(ArtifactError, match=r"name \"gen_cond\" differs from its folder 'other'"):
        check_model(renamed)
    (model_copy / "1" / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="1/model.onnx is missing"):
        check_model(model_copy)
    shutil.rmtree(model_copy / "1")
    with pytest.raises(ArtifactError, match="no version folder"):
        check_model(model_copy)
    (model_copy / "config.pbtxt").unlink()
    with pytest.raises(ArtifactError, match="has no config.pbtxt"):
        check_model(model_copy)


# ---- TensorRT plans ---------------------------------------------------------------------------------------------


@pytest.fixture
def export_with_engines(exports, tmp_path):
    """A copy of an export whose manifest lists two FP16 engines. TensorRT cannot run here, so the engine files are
    stand-in bytes, not plans: neither write_repository nor check_model loads a plan (Triton does, at load time),
    so this tests the repository layout and config only, never that a plan loads."""
    folder = shutil.copytree(exports["cond"], tmp_path / "export")
    manifest = json.loads((folder / "manifest.json").read_text())
    for gpu, capability in (("NVIDIA L4", (8, 9)), ("NVIDIA H100 80GB HBM3", (9, 0))):
        file = engine_filename(gpu, capability, "10.13.3", "fp16")
        data = f"stand-in bytes for {file}, not a TensorRT engine".encode()
        (folder / file).write_bytes(data)
        manifest["engines"].append({"file": file, "tensorrt_version": "10.13.3", "gpu": gpu, "precision": "fp16",
                                    "compute_capability": "{}.{}".format(*capability), "size": len(data),
                                    "sha256": hashlib.sha256(data).hexdigest()})
    (folder / "manifest.json").write_text(mf.dumps(manifest))
    return folder


def test_engines_of_the_precision_become_a_tensorrt_plan_model(export_with_engines, tmp_path):
    said = []
    folder = write_repository(export_with_engines, tmp_path / "repo", precision="fp16", tensorrt_accelerator=True,
                              log=said.append)
    config = check_model(folder)
    assert config.platform == "tensorrt_plan" and not config.HasField("optimization")
    assert dict(config.cc_model_filenames) == {"8.9": "model_sm89.plan", "9.0": "model_sm90.plan"}
    assert config.default_model_filename in config.cc_model_filenames.values()
    assert sorted(p.name for p in (folder / "1").iterdir()) == ["model_sm89.plan", "model_sm90.plan"]
    engine = next(e for e in mf.load_export(export_with_engines)["engines"] if e["compute_capability"] == "8.9")
    assert (folder / "1" / "model_sm89.plan").read_bytes() == (export_with_engines / engine["file"]).read_bytes()
    assert [(t.name, list(t.dims), t.HasField("reshape")) for t in config.input] == [("z", [16], False),
                                                                                   ("label", [1], True)]
    assert "--trt-accelerator ignored" in said[0]
    (folder / "1" / "model_sm90.plan").unlink()
    with pytest.raises(ArtifactError, match="1/model_sm90.plan is missing"):
        check_model(folder)
    # no fp32 engine: the fp32 model is the ONNX one
    fp32 = check_model(write_repository(export_with_engines, tmp_path / "repo", name="fp32", log=quiet))
    assert fp32.platform == "onnxruntime_onnx" and not fp32.cc_model_filenames
    with pytest.raises(UserError, match="TensorRT engines, which run on GPUs only: use --kind gpu"):
        write_repository(export_with_engines, tmp_path / "repo", precision="fp16", kind="cpu", log=quiet)


# ---- what write_repository refuses ------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ({"tensorrt_accelerator": True, "kind": "cpu"}, "--trt-accelerator needs --kind gpu"),
    ({"precision": "int8"}, "--precision 'int8' is not one of fp32, fp16"),
    ({"kind": "tpu"}, "--kind tpu"),
    ({"instances": 0}, "--instances 0: must be an integer >= 1"),
    ({"max_queue_delay_us": -1}, "--max-queue-delay-us -1"),
    ({"name": "../escape"}, "--name '../escape'"),
])
def test_bad_options_are_one_line_user_errors(exports, tmp_path, options, message):
    with pytest.raises(UserError, match=message) as error:
        write_repository(exports["uncond"], tmp_path, log=quiet, **options)
    assert "\n" not in str(error.value) and not any(tmp_path.iterdir())


def test_a_folder_we_wrote_is_replaced_and_any_other_is_refused(exports, tmp_path):
    write_repository(exports["uncond"], tmp_path, log=quiet)
    write_repository(exports["uncond"], tmp_path, instances=2, log=quiet)
    assert check_model(tmp_path / "dcgan_mnist").instance_group[0].count == 2
    assert [p.name for p in tmp_path.iterdir()] == ["dcgan_mnist"]  # no temporary folders left behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.pbtxt").write_text("hand written\n")
    with pytest.raises(UserError, match="mine exists and was not written by gandeploy; remove it, or pass --name"):
        write_repository(exports["uncond"], tmp_path, name="mine", log=quiet)
    assert (tmp_path / "mine" / "config.pbtxt").read_text() == "hand written\n"


def test_an_export_without_what_is_asked_or_disagreeing_is_refused(exports, tmp_path):
    folder = shutil.copytree(exports["uncond"], tmp_path / "no-fp16")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "generator.fp16.onnx").unlink()
    del manifest["artifacts"]["generator.fp16.onnx"], manifest["parity"]["onnxruntime_fp16"]  # as --no-fp16 writes
    (folder / "manifest.json").write_text(mf.dumps(manifest))
    with pytest.raises(UserError, match="has no generator.fp16.onnx: .* or use --precision fp32"):
        write_repository(folder, tmp_path / "repo", precision="fp16", log=quiet)
    manifest["inputs"][0]["shape"] = ["batch", 17]
    (folder / "manifest.json").write_text(mf.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"manifest.json says z is float32 \['batch', 17\], the ONNX graph has"):
        write_repository(folder, tmp_path / "repo", log=quiet)


def test_without_tritonclient_the_fix_is_named(exports, tmp_path, repo, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # what an install without the extra looks like
    for call in (lambda: write_repository(exports["uncond"], tmp_path, log=quiet), lambda: check_model(repo["uncond"])):
        with pytest.raises(UserError, match=r"pip install 'gandeploy\[triton\]'"):
            call()


# ---- the command line -------------------------------------------------------------------------------------------


def test_cli_writes_checks_and_refuses_in_one_line(exports, tiny_run, tmp_path):
    code, out = cli("triton", str(exports["uncond"]), "--out", str(tmp_path / "repo"), "--instances", "2")
    assert code == 0 and "wrote Triton model dcgan_mnist" in out
    code, out = cli("triton", "--check", str(tmp_path / "repo" / "dcgan_mnist"))
    assert code == 0 and "parses with Triton's schema" in out
    code, out = cli("triton", "--check", str(exports["uncond"]))
    assert code == 2 and "has no config.pbtxt" in out
    code, out = cli("export", str(tiny_run), "--out", str(tmp_path / "exp" / "tiny"), "--max-batch", "32",
                    "--opt-batch", "8", "--no-fp16", "--triton")
    assert code == 0, out
    assert check_model(tmp_path / "exp" / "triton" / "dcgan_mnist").max_batch_size == 32  # beside the export
