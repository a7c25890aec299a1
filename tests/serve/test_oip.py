"""The Open Inference Protocol, spoken by a client nobody here wrote: tritonclient.http against `gandeploy serve`,
JSON and binary tensors, answers equal to the Sampler's; bad tensors get the protocol's error and status."""

import numpy as np
import pytest

from gandeploy import Sampler
from gandeploy.latents import latents
from http_server import Server

httpclient = pytest.importorskip("tritonclient.http", reason="pip install 'gandeploy[triton]' (tritonclient[http])")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def servers(exports):
    running = {kind: Server(exports[kind]) for kind in ("uint8", "cond")}
    yield running
    for server in running.values():
        server.stop()


def client(server):
    return httpclient.InferenceServerClient(url=f"{server.address.hostname}:{server.address.port}")


def name_of(export):
    import json

    return json.loads((export / "manifest.json").read_text())["name"]


@pytest.mark.parametrize("kind", ["uint8", "cond"])
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_gets_the_samplers_images(servers, exports, kind, binary):
    c = client(servers[kind])
    name = name_of(exports[kind])
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready(name)
    meta = c.get_model_metadata(name)
    assert [i["name"] for i in meta["inputs"]] == (["z", "label"] if kind == "cond" else ["z"])
    assert meta["outputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
    z = latents(11, 6, 16)
    inputs = [httpclient.InferInput("z", list(z.shape), "FP32")]
    inputs[0].set_data_from_numpy(z, binary_data=binary)
    labels = None
    if kind == "cond":
        labels = (np.arange(6) % 10).astype(np.int64)
        inputs.append(httpclient.InferInput("label", [6, 1], "INT64"))
        inputs[1].set_data_from_numpy(labels.reshape(6, 1), binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("images", binary_data=binary)]
    result = c.infer(name, inputs, outputs=outputs, request_id="r1")
    images = result.as_numpy("images")
    with Sampler(exports[kind], backend="onnxruntime") as sampler:
        np.testing.assert_array_equal(images, sampler.run(z, labels))
        np.testing.assert_array_equal(images, sampler.sample(6, seed=11, labels=labels))  # the same images 0..5
    assert result.get_response()["id"] == "r1"


def test_bad_tensors_get_the_protocols_error(servers, exports):
    c = client(servers["uint8"])
    name = name_of(exports["uint8"])

    def infer(tensors, model=name):
        inputs = []
        for tensor_name, array, datatype in tensors:
            t = httpclient.InferInput(tensor_name, list(array.shape), datatype)
            t.set_data_from_numpy(array)
            inputs.append(t)
        with pytest.raises(InferenceServerException) as caught:
            c.infer(model, inputs)
        return caught.value

    z = latents(1, 2, 16)
    cases = [
        ([("w", z, "FP32")], "unknown input 'w'", "400"),
        ([("z", z.astype(np.float64), "FP64")], "datatype 'FP64'; expected FP32", "400"),
        ([("z", z[:, :8].copy(), "FP32")], "shape [2, 8]; expected [n, 16]", "400"),
        ([("z", latents(1, 1100, 16), "FP32")], "a batch of 1100", "400"),
        ([("z", np.full((2, 16), np.nan, np.float32), "FP32")], "NaN", "400"),
    ]
    for tensors, message, status in cases:
        error = infer(tensors)
        assert message in error.message() and error.status() == status, (error.message(), error.status())
    error = infer([("z", z, "FP32")], model="other")
    assert "unknown model 'other'" in error.message() and error.status() == "404"
    assert not c.is_model_ready("other")


@pytest.mark.parametrize("tensor, message", [
    ({"name": "z", "shape": [2 + 2**62, 16], "datatype": "FP32", "data": [0.0] * 32}, "larger than any request"),
    ({"name": "z", "shape": [2, 16], "datatype": "FP32", "data": ["1"] * 32}, "data is not FP32 numbers"),
    ({"name": "z", "shape": [1, 16], "datatype": "FP32", "data": [[0.0] * 8, [0.0] * 9]}, "data is not FP32"),
])
def test_malformed_json_tensors_are_400_not_500(servers, exports, tensor, message):
    import json

    status, _, body = servers["uint8"].request("POST", f"/v2/models/{name_of(exports['uint8'])}/infer",
                                               {"inputs": [tensor], "id": 7})
    assert status == 400 and message in json.loads(body)["error"], body


def test_labels_must_be_integers(servers, exports):
    import json

    tensors = [{"name": "z", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16},
               {"name": "label", "shape": [1, 1], "datatype": "INT64", "data": [2.9]}]
    status, _, body = servers["cond"].request("POST", f"/v2/models/{name_of(exports['cond'])}/infer",
                                              {"inputs": tensors})
    assert status == 400 and "data is not INT64 numbers" in json.loads(body)["error"]
    # the model's signature declares `label`: unlike v1 (k % classes by default), v2 requires it, as Triton would
    status, _, body = servers["cond"].request("POST", f"/v2/models/{name_of(exports['cond'])}/infer",
                                              {"inputs": tensors[:1]})
    assert status == 400 and "input 'label' is missing" in json.loads(body)["error"]
