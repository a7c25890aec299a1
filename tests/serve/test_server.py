"""`gandeploy serve` as a real process on loopback, spoken to over HTTP: endpoints, formats, determinism under
concurrency, bad input, overload, timeouts, metrics and graceful shutdown."""

import base64
import http.client
import io
import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from gandeploy import Sampler

from conftest import cli
from http_server import Server

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'gandeploy[serve]'")


@pytest.fixture(scope="module")
def server(exports):
    s = Server(exports["uint8"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def direct(exports):
    with Sampler(exports["uint8"], backend="onnxruntime") as sampler:
        yield sampler


def npy(body: bytes) -> np.ndarray:
    return np.load(io.BytesIO(body), allow_pickle=False)


def test_health_ready_and_model(server):
    assert server.get("/healthz")[:1] == (200,)
    status, _, body = server.get("/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    status, _, body = server.get("/v1/model")
    model = json.loads(body)
    assert status == 200 and model["name"] == "dcgan_mnist" and model["output"]["shape"] == ["batch", 28, 28, 1]
    assert model["serving"]["backend"] == "onnxruntime" and model["serving"]["max_batch"] == 16  # the export's opt
    assert "source" not in model  # no local paths leak out


def test_npy_png_and_json_carry_the_samplers_images(server, direct):
    expected = direct.sample(8, seed=7)
    status, headers, body = server.post({"n": 8, "seed": 7, "format": "npy"})
    assert status == 200 and headers["content-type"] == "application/x-npy"
    images = npy(body)
    assert images.dtype == np.uint8 and images.shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(images, expected)

    status, _, body = server.post({"n": 8, "seed": 7, "format": "json"})
    decoded = json.loads(body)
    assert status == 200 and decoded["shape"] == [28, 28, 1] and len(decoded["images"]) == 8
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(decoded["images"][0]))))
    np.testing.assert_array_equal(first, expected[0, ..., 0])

    status, headers, body = server.get("/v1/generate?n=16&seed=7&scale=2")
    assert status == 200 and headers["content-type"] == "image/png"
    grid = np.asarray(Image.open(io.BytesIO(body)))
    assert grid.shape == (2 * (4 * 30 + 2),) * 2  # 4 x 4 images of 28 px, 2 px apart, doubled
    np.testing.assert_array_equal(grid[4:60:2, 4:60:2], expected[0, ..., 0])  # top-left image, unscaled


def test_same_seed_same_bytes_whatever_is_in_flight(server):
    asks = [{"n": n, "seed": seed, "format": "npy"} for seed in (1, 2, 3) for n in (1, 5, 12)] * 4
    alone = {(a["n"], a["seed"]): server.post(a)[2] for a in asks[:9]}
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(server.post, asks))
    for ask, (status, _, body) in zip(asks, together):
        assert status == 200 and body == alone[(ask["n"], ask["seed"])]
    for seed in (1, 2, 3):  # image k of a seed does not depend on n
        np.testing.assert_array_equal(npy(alone[(12, seed)])[:5], npy(alone[(5, seed)]))
    assert npy(alone[(1, 1)]).tobytes() != npy(alone[(1, 2)]).tobytes()


@pytest.mark.parametrize("body, field", [
    ({"n": 0}, "n"), ({"n": 1025}, "n"), ({"n": "4"}, "n"), ({"n": 2.5}, "n"), ({"n": True}, "n"),
    ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"), ({"format": "gif"}, "format"), ({"scale": 0}, "scale"),
    ({"labels": [1]}, "labels"), ({"steps": 3}, "steps"), ("not json", "body"), ([1, 2], "body"),
    ({"format": ["png"]}, "format"), ({"labels": [[1, [2]], 3]}, "labels"), ({"n": {"$gt": 1}}, "n"),
    ('{"n": ' + "[" * 20000 + "]" * 20000 + "}", "body"),  # nested past Python's recursion limit
    ('{"\\ud800": 1}', "\\ud800"), (b'{"n": "\xff"}', "body"),  # a lone surrogate in a key; bytes not UTF-8
])
def test_bad_input_is_422_naming_the_field(server, body, field):
    status, _, answer = server.post(body)
    answer = json.loads(answer)
    assert status == 422 and answer["field"] == field
    assert field in answer["error"] or field == "body"


def test_bad_query_is_422_and_metrics_count_every_answer(server):
    before_ok = server.metric("gandeploy_requests_total", endpoint="generate", status="200")
    before_bad = server.metric("gandeploy_requests_total", endpoint="generate", status="422")
    before_batches = server.metric("gandeploy_batch_images_count")
    assert server.get("/v1/generate?n=abc")[0] == 422
    assert server.get("/v1/generate?n=3&seed=4")[0] == 200
    assert server.metric("gandeploy_requests_total", endpoint="generate", status="200") == before_ok + 1
    assert server.metric("gandeploy_requests_total", endpoint="generate", status="422") == before_bad + 1
    assert server.metric("gandeploy_batch_images_count") >= before_batches + 1
    assert server.metric("gandeploy_request_duration_seconds_count", endpoint="generate") >= 2
    assert server.metric("gandeploy_queue_images") == 0 and server.metric("gandeploy_ready") == 1


def test_conditional_model_with_batching_off(exports):
    server = Server(exports["cond"], "--no-batching")
    try:
        with Sampler(exports["cond"], backend="onnxruntime") as sampler:
            expected = sampler.sample(4, seed=3, labels=[0, 1, 2, 3])
        status, _, body = server.post({"n": 4, "seed": 3, "labels": [0, 1, 2, 3], "format": "npy"})
        assert status == 200
        np.testing.assert_array_equal(npy(body), expected)
        assert server.get("/v1/generate?n=4&seed=3&labels=5")[0] == 200
        status, _, body = server.get("/v1/generate?n=4&seed=3&format=npy")  # no labels: k % classes, as sample
        assert status == 200
        np.testing.assert_array_equal(npy(body), expected)
        for query in ("n=4&labels=10", "n=4&labels=1,2", "n=4&labels=x"):
            status, _, body = server.get(f"/v1/generate?{query}")
            assert status == 422 and json.loads(body)["field"] == "labels", query
    finally:
        server.stop()


def test_burst_beyond_the_queue_gets_503_at_once_then_service_recovers(exports):
    # the first requests wait up to 1 s for company, so the queue of 16 images stays full while the burst arrives
    server = Server(exports["uint8"], "--max-queue", "16", "--max-delay-ms", "1000", "--max-batch", "64")
    try:
        with ThreadPoolExecutor(12) as pool:
            started = time.monotonic()
            futures = [pool.submit(server.post, {"n": 8, "seed": k, "format": "npy"}) for k in range(12)]
            time.sleep(0.3)
            assert server.get("/healthz")[0] == 200  # while two requests wait and the rest are refused
        refused = [f.result() for f in futures if f.result()[0] == 503]
        answers = sorted(f.result()[0] for f in futures)
        assert answers == [200] * 2 + [503] * 10, answers
        assert all(h["retry-after"] == "1" and b"queue full" in body for _, h, body in refused)
        assert time.monotonic() - started < 10
        assert server.post({"n": 8, "seed": 0, "format": "npy"})[0] == 200  # serving normally again
        assert server.metric("gandeploy_requests_total", endpoint="generate", status="503") == 10
    finally:
        server.stop()


def test_request_waiting_past_its_timeout_gets_504(exports):
    server = Server(exports["uint8"], "--max-delay-ms", "3000", "--timeout-s", "0.3")
    try:
        status, _, body = server.post({"n": 1})
        assert status == 504 and b"--timeout-s" in body
        assert server.get("/healthz")[0] == 200
    finally:
        server.stop()


def test_sigterm_drains_in_flight_requests_then_exits_cleanly(exports):
    server = Server(exports["uint8"], "--max-delay-ms", "1500")
    answer = {}
    client = threading.Thread(target=lambda: answer.update(r=server.post({"n": 2, "format": "npy"})))
    client.start()
    time.sleep(0.5)  # the request is waiting in the batching front
    server.proc.send_signal(signal.SIGTERM)
    client.join(30)
    assert server.proc.wait(30) == 0
    assert answer["r"][0] == 200 and npy(answer["r"][2]).shape == (2, 28, 28, 1)
    assert "stopped: 1 generate requests answered" in "".join(server.lines)


def test_cli_refuses_bad_exports_and_taken_ports_in_one_line(exports, tmp_path):
    code, out = cli("serve", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in out and "Traceback" not in out
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, out = cli("serve", str(exports["uint8"]), "--port", str(taken.getsockname()[1]))
    assert code == 2 and "pick another --port" in out
    code, out = cli("serve", str(exports["uint8"]), "--max-queue", "8", "--max-images-per-request", "16")
    assert code == 2 and "--max-images-per-request" in out


def test_a_body_too_large_is_413_before_it_is_read(server):
    connection = http.client.HTTPConnection(server.address.hostname, server.address.port, timeout=30)
    connection.putrequest("POST", "/v1/generate")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(200 * 2**20))  # 200 MB announced, none of it sent
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["field"] == "body"
    connection.close()
    connection = http.client.HTTPConnection(server.address.hostname, server.address.port, timeout=30)
    chunks = (b"[" + b"0," * 8192 for _ in range(64))  # 1 MB with no length: capped while it streams in
    connection.request("POST", "/v1/generate", body=chunks, encode_chunked=True,
                       headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
    response = connection.getresponse()
    assert response.status == 413
    connection.close()
    assert server.get("/healthz")[0] == 200


@pytest.fixture(scope="module")
def strict_server(exports):
    server = Server(exports["uint8"], "--client-timeout-s", "1")
    yield server
    server.stop()


def _raw(server) -> socket.socket:
    return socket.create_connection((server.address.hostname, server.address.port), timeout=10)


def test_slow_and_oversized_clients_are_dropped_while_others_are_served(strict_server):
    slow = _raw(strict_server)
    slow.sendall(b"GET /v1/generate?n=1 HTTP/1.1\r\nHost: x\r\n")  # and never the rest of the headers
    trickle = _raw(strict_server)
    trickle.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{\"n\"")  # the body never completes
    for _ in range(5):  # meanwhile everyone else is served
        assert strict_server.get("/v1/generate?n=2&seed=1&format=npy")[0] == 200
    start = time.monotonic()
    assert slow.recv(1024) == b"" and time.monotonic() - start < 5  # closed by the server
    answer = b""
    while b"}" not in answer:  # the status line and the JSON body may come in separate segments
        chunk = trickle.recv(4096)
        assert chunk, answer
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b'"field":"body"' in answer.replace(b" ", b"")
    big = _raw(strict_server)
    big.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 32768 + b"\r\n\r\n")
    assert big.recv(1024).startswith(b"HTTP/1.1 431")
    for sock in (slow, trickle, big):
        sock.close()
    deadline = time.monotonic() + 10  # the server's log line reaches us through a pipe and a reader thread
    while "dropped a client" not in "".join(strict_server.lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "dropped a client that sent no complete request headers" in "".join(strict_server.lines)


def test_a_client_leaving_mid_request_is_one_log_line(strict_server):
    gone = _raw(strict_server)
    gone.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"n\": 1")
    time.sleep(0.2)
    gone.close()
    deadline = time.monotonic() + 5
    while "disconnected before its request was read" not in "".join(strict_server.lines):
        assert time.monotonic() < deadline, "".join(strict_server.lines)
        time.sleep(0.05)
    assert "Traceback" not in "".join(strict_server.lines)
    assert strict_server.get("/healthz")[0] == 200


def test_an_export_that_cannot_run_exits_2_at_start(exports, tmp_path):
    """Checksums match, the manifest is whole, but the graph cannot compute: refused before anything listens."""
    import shutil

    onnx = pytest.importorskip("onnx", reason="damaging the graph needs onnx (the export extra)")
    from onnx import numpy_helper

    from conftest import run_module
    from gandeploy.formats.files import sha256

    folder = tmp_path / "broken"
    shutil.copytree(exports["uint8"], folder)
    model = onnx.load(str(folder / "generator.onnx"))
    axes = next(t for t in model.graph.initializer if t.name == model.graph.node[0].input[1])  # Unsqueeze's axes
    axes.CopyFrom(numpy_helper.from_array(np.array([7, 9], dtype=np.int64), axes.name))
    onnx.save(model, str(folder / "generator.onnx"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["artifacts"]["generator.onnx"].update(size=(folder / "generator.onnx").stat().st_size,
                                                   sha256=sha256(folder / "generator.onnx"))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = run_module("serve", str(folder), "--port", "0", "--backend", "onnxruntime", timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "listening" not in result.stdout
