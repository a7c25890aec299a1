"""Everything downstream of `gandeploy export --stylegan`, on NVIDIA-layout pickles of the golden fixtures: a
conditional StyleGAN2 (ada_resnet64_cond, 10 classes, RGB) and an unconditional one (ada_orig32, greyscale), both
with uint8 output and their FP16 twin. The graphs hold only operators TensorRT imports; `gandeploy verify` passes;
the Sampler is deterministic; `gandeploy sample`, `serve` (v1 and the Open Inference Protocol), `generate` and
`triton` all hand out the Sampler's very bytes. (StyleGAN3's graphs are checked in test_tensorrt.py.)"""

import io
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import nvidia_layout as nv
from conftest import cli
from gandeploy import Sampler
from gandeploy.export.tensorrt import unsupported_ops
from gandeploy.formats.images import grid
from gandeploy.latents import latents

SMALL = ["--opt-batch", "2", "--max-batch", "4"]  # the export checks every batch size of the profile on the CPU
FIXTURES = {"cond": "ada_resnet64_cond", "uncond": "ada_orig32"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Both exports, made lazily: {'cond': folder, 'uncond': folder}."""
    made = {}

    def get(key):
        if key not in made:
            name = FIXTURES[key]
            if not (nv.DATA / f"{name}.safetensors").is_file():
                pytest.skip(f"golden fixture {name} is not in tests/data/stylegan")
            root = tmp_path_factory.mktemp(name)
            pkl = nv.write_fixture_pickle(name, root / f"{name}.pkl")
            code, output = cli("export", "--stylegan", str(pkl), "--psi", "0.7", "--out", str(root / name), *SMALL)
            assert code == 0, output
            made[key] = root / name
        return made[key]

    return get


@pytest.fixture(scope="module")
def cond(exported):
    return exported("cond")


@pytest.fixture(scope="module")
def sampler(cond):
    with Sampler(cond, backend="onnxruntime") as s:
        yield s


def manifest(folder) -> dict:
    return json.loads((folder / "manifest.json").read_text())


LABELS = [0, 4, 9]


@pytest.mark.parametrize("key", FIXTURES)
def test_fp32_and_fp16_graphs_hold_only_operators_tensorrt_imports(exported, key):
    for file in ("generator.onnx", "generator.fp16.onnx"):
        path = exported(key) / file
        assert unsupported_ops(path) == [], file
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
        # what the table's restrictions are about is there: transposed convolutions (weights transposed in the
        # graph), the uint8 post-processing, and (skip/resnet architectures) zero insertion as a rank-6 Pad
        assert {"Conv", "ConvTranspose", "Round", "Clip", "Cast"} <= ops, sorted(ops)
        assert ("Pad" in ops) == (key == "cond"), sorted(ops)


@pytest.mark.parametrize("key", FIXTURES)
def test_verify_passes_on_every_backend_here(exported, key):
    code, output = cli("verify", str(exported(key)))
    assert code == 0 and "FAILED" not in output, output
    assert "onnxruntime" in output and "fp16" in output, output


@pytest.mark.parametrize("key", FIXTURES)
def test_sample_is_deterministic_and_is_run_on_the_seeds_latents(exported, key):
    folder = exported(key)
    info = manifest(folder)
    labels = LABELS if info["generator"]["num_classes"] else None
    with Sampler(folder, backend="onnxruntime") as s:
        images = s.sample(3, seed=5, labels=labels)
        size, channels = info["generator"]["resolution"], info["generator"]["channels"]
        assert images.dtype == np.uint8 and images.shape == (3, size, size, channels)
        np.testing.assert_array_equal(images, s.sample(3, seed=5, labels=labels))
        np.testing.assert_array_equal(images, s.run(s.latents(3, 5), labels))
        np.testing.assert_array_equal(images, s.run(latents(5, 3, info["generator"]["latent_dim"]), labels))
        np.testing.assert_array_equal(images[:2], s.sample(2, seed=5, labels=labels and labels[:2]))
        assert not np.array_equal(images[0], s.sample(1, seed=6, labels=labels and labels[:1])[0])
        if labels:  # the label steers the image
            assert not np.array_equal(images[0], s.sample(1, seed=5, labels=[1])[0])


def test_cli_sample_writes_the_samplers_grid(cond, sampler, tmp_path):
    out = tmp_path / "grid.png"
    code, output = cli("sample", str(cond), "--n", "3", "--seed", "5", "--labels", "0,4,9", "--scale", "1",
                       "--backend", "onnxruntime", "--out", str(out))
    assert code == 0 and "wrote 3 samples" in output, output
    picture = np.asarray(Image.open(out))
    np.testing.assert_array_equal(picture, grid(sampler.sample(3, seed=5, labels=LABELS)))


def test_serve_v1_and_v2_hand_out_the_samplers_bytes(cond, sampler):
    from http_server import Server

    pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'gandeploy[serve]'")
    expected = sampler.sample(3, seed=5, labels=LABELS)
    server = Server(cond)
    try:
        status, headers, body = server.post({"n": 3, "seed": 5, "labels": LABELS, "format": "npy"})
        assert status == 200 and headers["content-type"] == "application/x-npy", body[:200]
        np.testing.assert_array_equal(np.load(io.BytesIO(body), allow_pickle=False), expected)
        status, _, body = server.post({"n": 3, "seed": 5, "labels": [10], "format": "npy"})
        assert status == 422 and json.loads(body)["field"] == "labels"

        # the Open Inference Protocol, as JSON (any client) and as binary tensors (tritonclient, when installed)
        name = manifest(cond)["name"]
        z = sampler.latents(3, 5)
        tensors = [{"name": "z", "shape": list(z.shape), "datatype": "FP32", "data": z.ravel().tolist()},
                   {"name": "label", "shape": [3, 1], "datatype": "INT64", "data": LABELS}]
        status, _, body = server.request("POST", f"/v2/models/{name}/infer", {"inputs": tensors, "id": "a"})
        answer = json.loads(body)
        assert status == 200 and answer["id"] == "a", answer
        [images] = answer["outputs"]
        assert images["datatype"] == "UINT8" and images["shape"] == list(expected.shape)
        np.testing.assert_array_equal(np.asarray(images["data"], np.uint8).reshape(expected.shape), expected)
        tensors[1]["data"] = [0, 10, 1]  # a gather past the one-hot table: refused here, whatever runs the graph
        status, _, body = server.request("POST", f"/v2/models/{name}/infer", {"inputs": tensors})
        assert status == 400 and "label 10 is out of range" in json.loads(body)["error"], body
        try:
            import tritonclient.http as httpclient
        except ImportError:
            return
        client = httpclient.InferenceServerClient(url=f"{server.address.hostname}:{server.address.port}")
        inputs = [httpclient.InferInput("z", list(z.shape), "FP32"), httpclient.InferInput("label", [3, 1], "INT64")]
        inputs[0].set_data_from_numpy(z)
        inputs[1].set_data_from_numpy(np.asarray(LABELS, np.int64).reshape(3, 1))
        result = client.infer(name, inputs, outputs=[httpclient.InferRequestedOutput("images", binary_data=True)])
        np.testing.assert_array_equal(result.as_numpy("images"), expected)
    finally:
        server.stop()


def test_generate_writes_shards_of_the_samplers_images(cond, sampler, tmp_path):
    code, output = cli("generate", str(cond), "--n", "5", "--shard-size", "2", "--seed", "3",
                       "--out", str(tmp_path / "g"), "--no-progress")
    assert code == 0, output
    record = json.loads((tmp_path / "g" / "shards.json").read_text())
    assert record["complete"] and [s["start"] for s in record["shards"]] == [0, 2, 4]
    parts = [np.load(tmp_path / "g" / s["file"], allow_pickle=False) for s in record["shards"]]
    images = np.concatenate([p["images"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    np.testing.assert_array_equal(labels, np.arange(5) % 10)
    np.testing.assert_array_equal(images, sampler.sample(5, seed=3, labels=labels))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_triton_repository_passes_its_check_and_runs_the_samplers_graph(cond, sampler, tmp_path, precision):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    name = f"sg_{precision}"
    code, output = cli("triton", str(cond), "--out", str(tmp_path), "--name", name, "--precision", precision)
    assert code == 0, output
    code, output = cli("triton", "--check", str(tmp_path / name))
    assert code == 0 and "matches its model" in output, output
    config = text_format.Parse((tmp_path / name / "config.pbtxt").read_text(), pb.ModelConfig())
    assert [(t.name, list(t.dims)) for t in config.input] == [("z", [32]), ("label", [1])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("images", [64, 64, 3])]
    # what Triton does with a request: label (n, 1) on the wire, reshaped to (n,) for the model
    session = ort.InferenceSession(str(tmp_path / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    z = sampler.latents(3, 5)
    [images] = session.run(["images"], {"z": z, "label": np.asarray(LABELS, np.int64)})
    if precision == "fp32":
        np.testing.assert_array_equal(images, sampler.sample(3, seed=5, labels=LABELS))
    else:
        with Sampler(cond, backend="onnxruntime", precision="fp16") as half:
            np.testing.assert_array_equal(images, half.sample(3, seed=5, labels=LABELS))
