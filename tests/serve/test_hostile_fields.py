"""Hostile values in every field a client sends, v1 and v2: each is a 4xx with a one-line JSON error, never a 500,
and the next correct request gets the right images. Values are raw JSON text, so the cases JSON allows and Python's
json.dumps would not write (5,000 digits, a lone surrogate, NaN) reach the server as a client would send them."""

import http.client
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gandeploy import Sampler
from gandeploy.latents import latents
from http_server import Server

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'gandeploy[serve]'")

Z = latents(5, 1, 16)  # (1, 16)
LABEL = 3


@pytest.fixture(scope="module")
def served(exports):
    """A conditional server (it has every field, labels included) and the images it must answer with."""
    server = Server(exports["cond"])
    with Sampler(exports["cond"], backend="onnxruntime") as sampler:
        expected = {"v2": sampler.run(Z, np.array([LABEL])), "v1": sampler.sample(2, seed=5, labels=[1, 2])}
    name = json.loads((exports["cond"] / "manifest.json").read_text())["name"]
    yield server, f"/v2/models/{name}", expected
    server.stop()


def send(server, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection(server.address.hostname, server.address.port, timeout=30)
    connection.putrequest(method, path)
    for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
        connection.putheader(key, value)  # bytes go as they are: a header of any byte a client may send
    data = body.encode() if isinstance(body, str) else body
    connection.putheader("Content-Length", str(len(data or b"")))
    connection.endheaders(data)
    response = connection.getresponse()
    out = response.status, dict(response.getheaders()), response.read()
    connection.close()
    return out


def good_v2():
    return {"id": "r1", "inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 16], "data": Z.ravel().tolist(),
                                    "parameters": {}},
                                   {"name": "label", "datatype": "INT64", "shape": [1, 1], "data": [LABEL]}],
            "outputs": [{"name": "images", "parameters": {"binary_data": False}}],
            "parameters": {"binary_data_output": False}}


def with_value(request: dict, path: tuple, raw: str) -> str:
    """The request as JSON text with the value at path replaced by raw JSON text."""
    place = request
    for key in path[:-1]:
        place = place[key]
    place[path[-1]] = "@HOSTILE@"
    return json.dumps(request).replace('"@HOSTILE@"', raw)


def refused(status, headers, body, statuses=range(400, 500)) -> str:
    assert status in statuses, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), (headers, body[:300])
    error = json.loads(body)["error"]
    assert isinstance(error, str) and "\n" not in error and len(error) < 400 and "Traceback" not in error, error
    return error


def v2_images(body: bytes) -> np.ndarray:
    output = json.loads(body)["outputs"][0]
    return np.array(output["data"], np.uint8).reshape(output["shape"])


def still_serves(server, model, expected):
    status, _, body = send(server, "POST", f"{model}/infer", json.dumps(good_v2()))
    assert status == 200 and json.loads(body)["id"] == "r1", body[:300]
    np.testing.assert_array_equal(v2_images(body), expected["v2"])
    ask = {"n": 2, "seed": 5, "labels": [1, 2], "format": "npy"}
    status, _, body = send(server, "POST", "/v1/generate", json.dumps(ask))
    assert status == 200
    np.testing.assert_array_equal(np.load(io.BytesIO(body), allow_pickle=False), expected["v1"])


# raw JSON text of the values a field might be sent instead of the right one
LIST, DICT, TRUE, FALSE, NULL = '["z"]', '{"name": "z"}', "true", "false", "null"
DIGITS_5000 = "9" * 5000  # past Python's int-from-text limit of 4,300 digits
BIG = "1" + "0" * 25  # an integer past 64 bits
SURROGATE, TEXT_DIGIT = '"\\udc80"', '"\\u0663"'  # a lone surrogate; Arabic-Indic 3, which int() takes
DEEP = "[" * 5000 + "]" * 5000
STRING = [LIST, DICT, TRUE, FALSE, "5", DIGITS_5000, SURROGATE]
OBJECT = [LIST, TRUE, "5", '"x"', DIGITS_5000, SURROGATE]
FLAG = ["1", "0", '"true"', LIST, DICT, DIGITS_5000, SURROGATE]
INTEGER = [TRUE, FALSE, "2.5", '"1"', LIST, DICT, NULL, DIGITS_5000, BIG, TEXT_DIGIT, SURROGATE]

V2_FIELDS = [
    (("id",), STRING),
    (("parameters",), OBJECT),
    (("parameters", "binary_data_output"), FLAG),
    (("outputs",), [DICT, TRUE, "5", '"images"', DIGITS_5000]),
    (("outputs", 0), [LIST, "5", '"images"', TRUE, NULL]),
    (("outputs", 0, "name"), [*STRING, NULL]),
    (("outputs", 0, "parameters"), OBJECT),
    (("outputs", 0, "parameters", "binary_data"), FLAG),
    (("inputs",), [DICT, TRUE, '"z"', NULL, DIGITS_5000]),
    (("inputs", 0), [LIST, '"z"', TRUE, NULL]),
    (("inputs", 0, "name"), [*STRING, NULL, '["z", "label"]']),
    (("inputs", 1, "name"), [*STRING, NULL]),
    (("inputs", 0, "datatype"), [*STRING, NULL, '"fp32"']),
    (("inputs", 0, "shape"), [DICT, TRUE, NULL, '"1,16"', "[[1], 16]", "[1, 1, 1, 1, 1, 1, 1, 1, 1, 16]"]),
    (("inputs", 0, "shape", 0), [*INTEGER, "-1"]),
    (("inputs", 1, "shape", 1), [*INTEGER, "-1"]),
    (("inputs", 0, "data"), [TRUE, '"x"', DICT, NULL, DIGITS_5000, "5", DEEP, "[[true]]"]),
    (("inputs", 0, "data", 0), [TRUE, FALSE, '"1"', NULL, DICT, DIGITS_5000, "NaN", "1e400", LIST, SURROGATE]),
    (("inputs", 1, "data"), [TRUE, "[true]", "[false]", "[[true]]", "[1.5]", '["1"]', "[null]", f"[{BIG}]", DEEP]),
    (("inputs", 1, "data", 0), INTEGER),
    (("inputs", 0, "parameters"), OBJECT),
    (("inputs", 0, "parameters", "binary_data_size"), [*INTEGER, "64"]),  # no binary data follows, whatever it says
]


@pytest.mark.parametrize("path, raw", [(path, raw) for path, values in V2_FIELDS for raw in values],
                         ids=lambda v: "/".join(map(str, v)) if isinstance(v, tuple) else v[:12])
def test_v2_hostile_field_is_400_in_one_line(served, path, raw):
    server, model, expected = served
    refused(*send(server, "POST", f"{model}/infer", with_value(good_v2(), path, raw)), statuses=[400])
    still_serves(server, model, expected)


@pytest.mark.parametrize("value", [b"\xb2", "٣".encode(), "１".encode(), b"9" * 5000, b"-1", b"1_0", b"0x10", b"",
                                   b"1e3", b"99999999999999999999999"])
def test_v2_hostile_header_length_is_400(served, value):
    """Inference-Header-Content-Length: '²'.isdigit() is true, int('²') raises; int() takes '٣'; 5,000 digits."""
    server, model, expected = served
    body = json.dumps(good_v2())
    error = refused(*send(server, "POST", f"{model}/infer", body, {"Inference-Header-Content-Length": value}),
                    statuses=[400])
    assert "Inference-Header-Content-Length" in error
    still_serves(server, model, expected)


def test_v2_id_is_echoed_and_a_lone_surrogate_is_refused_before_inference(served):
    server, model, expected = served
    before = server.metric("gandeploy_batch_images_count")
    error = refused(*send(server, "POST", f"{model}/infer", with_value(good_v2(), ("id",), SURROGATE)), [400])
    assert "lone surrogate" in error
    assert server.metric("gandeploy_batch_images_count") == before  # nothing ran for it
    status, _, body = send(server, "POST", f"{model}/infer", with_value(good_v2(), ("id",), '"\\ud83d\\ude00 r"'))
    assert status == 200 and json.loads(body)["id"] == "\U0001F600 r"  # a surrogate pair is one character


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/v2/nope", 404), ("GET", "/v2/models", 404), ("GET", "{model}/infer/more", 404),
    ("GET", "/v2/models/a%0Ab/ready/x", 404), ("GET", "{model}/infer", 405), ("POST", "/v2/health/live", 405),
    ("DELETE", "/v2", 405), ("PUT", "{model}", 405), ("POST", "{model}/versions/1/ready", 405),
    ("GET", "/v2/models/other", 404), ("GET", "{model}/versions/2", 404), ("GET", "/v2/models/a%0Ab", 404),
])
def test_v2_unknown_routes_and_wrong_methods_answer_the_protocols_error(served, method, path, status):
    server, model, expected = served
    refused(*send(server, method, path.format(model=model)), statuses=[status])
    still_serves(server, model, expected)


def test_other_unknown_routes_keep_starlettes_plain_answer(served):
    server, _, _ = served
    status, headers, body = send(server, "GET", "/nope")
    assert status == 404 and body == b"Not Found"


V1_FIELDS = [
    ("n", INTEGER), ("seed", INTEGER), ("scale", INTEGER),
    ("format", [LIST, DICT, TRUE, "5", NULL, SURROGATE, DIGITS_5000, '"PNG"']),
    ("labels", [TRUE, FALSE, "[true]", "[1, true]", "[false, 1]", "2.5", '["1"]', DICT, DIGITS_5000, BIG, f"[{BIG}]",
                "[[1], [2]]", '"1"', SURROGATE, TEXT_DIGIT, "[1.0, 2.0]", DEEP]),
]


@pytest.mark.parametrize("field, raw", [(field, raw) for field, values in V1_FIELDS for raw in values],
                         ids=lambda v: v[:12])
def test_v1_hostile_json_field_is_422_naming_it(served, field, raw):
    server, model, expected = served
    ask = {"n": 2, "seed": 5, "labels": [1, 2], "format": "npy"}
    status, headers, body = send(server, "POST", "/v1/generate", with_value(ask, (field,), raw))
    refused(status, headers, body, statuses=[422])
    assert json.loads(body)["field"] in (field, "body")  # "body": JSON Python will not read (5,000 digits, depth)
    still_serves(server, model, expected)


@pytest.mark.parametrize("field", ["n", "seed", "scale", "labels"])
@pytest.mark.parametrize("text", ["%C2%B2", "%D9%A3", "%EF%BC%91", "9" * 5000, "1_0", "0x10", "", "-", "3%0A", "1e3",
                                  "true", "%ED%B2%80", "%2B3", "%5B1%5D", "1,,2", "1,%D9%A3"])
def test_v1_hostile_query_value_is_422_naming_it(served, field, text):
    server, model, expected = served
    status, headers, body = send(server, "GET", f"/v1/generate?{field}={text}&format=npy")
    refused(status, headers, body, statuses=[422])
    assert json.loads(body)["field"] == field
    still_serves(server, model, expected)


def test_hostile_requests_under_load_leave_the_good_ones_right(served):
    """Hostile and correct requests at once: every hostile one refused, every correct one the right images."""
    server, model, expected = served
    hostile = [with_value(good_v2(), path, raw) for path, raw in [(("inputs", 0, "name"), LIST), (("id",), SURROGATE),
                                                                   (("inputs", 1, "data"), "[true]"),
                                                                   (("inputs", 0, "shape", 0), DIGITS_5000)]]
    good = json.dumps(good_v2())
    bodies = [hostile[k % 4] if k % 2 else good for k in range(64)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: send(server, "POST", f"{model}/infer", b), bodies))
    for body, (status, headers, answer) in zip(bodies, answers):
        if body is good:
            assert status == 200
            np.testing.assert_array_equal(v2_images(answer), expected["v2"])
        else:
            refused(status, headers, answer, statuses=[400])
    still_serves(server, model, expected)


def test_the_shared_field_checks_refuse_the_whole_class():
    from gandeploy.serve.http import Problem, as_int, as_text, decimal, shown

    for text in ["²", "٣", "１", "1_0", " 3", "+3", "0x10", "9" * 21, "9" * 5000, "", "-", "--1", "3\n"]:
        with pytest.raises(Problem):
            decimal(text, "n")
    assert decimal("-12", "seed") == -12 and decimal("9" * 20, "seed") == int("9" * 20)
    for value in [True, False, 2.0, "1", None, [1], {"n": 1}, 10**20, -10**20]:
        with pytest.raises(Problem):
            as_int(value, "n")
    assert as_int(10**20 - 1, "seed") == 10**20 - 1
    for value in ["\udc80", "a\ud800b", 7, None, ["x"]]:
        with pytest.raises(Problem):
            as_text(value, "id")
    assert as_text("é \U0001F600", "id") == "é \U0001F600"
    deep = []
    for _ in range(5000):
        deep = [deep]
    for value in ["x" * 100_000, "a\nb\udc80", deep, [0.5] * 100_000, {str(k): k for k in range(1000)}, 10**4000]:
        assert "\n" not in shown(value) and len(shown(value)) < 100 and shown(value).encode("utf-8")
