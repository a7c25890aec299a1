"""A real Triton: `gandeploy serve --engine triton` (the Sampler bound through PyTriton) answers tritonclient over
HTTP and gRPC with exactly the Sampler's bytes, refuses wrong requests with Triton's own errors and drains on
SIGTERM; and the bundled `tritonserver` parses the repository `gandeploy triton` writes.

Triton's Python backend stub needs a Python whose shared libpython the dynamic linker finds (a distribution's
python3). `make test` builds such a venv (.venv-triton, from /usr/bin/python3) and names its python in
GANDEPLOY_TRITON_PYTHON; without it these tests skip and say why."""

import json
import os
import signal
import socket
import sys
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import cli
from gandeploy import Sampler
from gandeploy.latents import latents

http = pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install 'gandeploy[triton]'")
grpc = pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed: pip install 'gandeploy[triton]'")
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX = 8  # --batch-size: Triton's max_batch_size for these servers


@pytest.fixture(scope="module")
def triton_python():
    python = os.environ.get("GANDEPLOY_TRITON_PYTHON")
    if not python or not Path(python).is_file():
        pytest.skip("no Python that can host Triton's stub: `make test` builds .venv-triton from /usr/bin/python3 "
                    "(a shared libpython) and sets GANDEPLOY_TRITON_PYTHON")
    probe = subprocess.run([python, "-c", "from gandeploy.serve.triton_engine import check_python; check_python()"],
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"{python} cannot host Triton: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    return python


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Server:
    def __init__(self, python: str, export: Path, *args: str):
        self.http_port, self.grpc_port, metrics = _ports(3)
        self.log = open(export.parent / f"triton-{export.name}-{self.http_port}.log", "w")
        self.process = subprocess.Popen(
            [python, "-m", "gandeploy", "serve", str(export), "--engine", "triton", "--backend", "onnxruntime",
             "--port", str(self.http_port), "--grpc-port", str(self.grpc_port), "--metrics-port", str(metrics),
             "--batch-size", str(MAX), "--timeout-s", "3", *args], stdout=self.log, stderr=subprocess.STDOUT)
        self.name = json.loads((export / "manifest.json").read_text())["name"]
        self.http = http.InferenceServerClient(f"127.0.0.1:{self.http_port}")
        self.grpc = grpc.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if self.http.is_model_ready(self.name):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        raise AssertionError(f"Triton did not become ready: {Path(self.log.name).read_text()[-2000:]}")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=120)
        self.log.close()
        return self.process.returncode


@pytest.fixture(scope="module")
def servers(triton_python, exports):
    started = {kind: Server(triton_python, exports[kind]) for kind in ("uint8", "cond")}
    yield started
    for server in started.values():
        server.stop()


def _infer(client, module, name, z, labels=None, binary=True):
    inputs = [module.InferInput("z", list(z.shape), "FP32")]
    inputs[0].set_data_from_numpy(z, **({"binary_data": binary} if module is http else {}))
    if labels is not None:
        inputs.append(module.InferInput("label", [len(labels), 1], "INT64"))
        inputs[1].set_data_from_numpy(labels.reshape(-1, 1), **({"binary_data": binary} if module is http else {}))
    return client.infer(name, inputs).as_numpy("images")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("kind", ["uint8", "cond"])
def test_triton_answers_with_the_samplers_bytes(servers, exports, protocol, kind):
    server = servers[kind]
    client, module = (server.http, http) if protocol == "http" else (server.grpc, grpc)
    with Sampler(exports[kind], backend="onnxruntime") as sampler:
        for n in range(1, MAX + 1):
            z = latents(n, n, sampler.config["latent_dim"])
            labels = (np.arange(n, dtype=np.int64) * 3) % 10 if kind == "cond" else None
            got = _infer(client, module, server.name, z, labels)
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, sampler.run(z, labels))
        np.testing.assert_array_equal(_infer(client, module, server.name, sampler.latents(5, seed=9),
                                             sampler.check_labels(None, 5)), sampler.sample(5, seed=9))


def test_json_tensors_and_the_models_signature(servers):
    server = servers["cond"]
    meta = server.http.get_model_metadata(server.name)
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("z", "FP32", [-1, 16]),
                                                                               ("label", "INT64", [-1, 1])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [("images", "UINT8", [-1, 28, 28, 1])]
    z, labels = latents(1, 3, 16), np.array([1, 2, 3])
    np.testing.assert_array_equal(_infer(server.http, http, server.name, z, labels, binary=False),
                                  _infer(server.http, http, server.name, z, labels))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_wrong_requests_get_tritons_errors(servers, protocol):
    server = servers["uint8"]
    client, module = (server.http, http) if protocol == "http" else (server.grpc, grpc)

    def ask(name, shape, datatype, data):
        tensor = module.InferInput(name, shape, datatype)
        tensor.set_data_from_numpy(data)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(server.name, [tensor])
        return str(caught.value)

    # Triton's messages, quoted: unexpected shape, datatype, and an input it does not know
    assert "unexpected shape for input 'z'" in ask("z", [2, 17], "FP32", np.zeros((2, 17), np.float32))
    wrong_type = ask("z", [2, 16], "FP64", np.zeros((2, 16), np.float64)).replace("'", "")
    assert "inference input z data-type is FP64, but model" in wrong_type and "expects FP32" in wrong_type
    assert "unexpected inference input 'zz'" in ask("zz", [2, 16], "FP32", np.zeros((2, 16), np.float32))
    assert f"must be <= {MAX}" in ask("z", [MAX + 1, 16], "FP32", np.zeros((MAX + 1, 16), np.float32))
    with pytest.raises(InferenceServerException, match="label 12 is out of range"):
        _infer(servers["cond"].http if protocol == "http" else servers["cond"].grpc, module, servers["cond"].name,
               latents(0, 2, 16), np.array([1, 12]))
    assert _infer(client, module, server.name, latents(0, 2, 16)).shape == (2, 28, 28, 1)  # still serving


def test_sigterm_drains_requests_in_flight(triton_python, exports):
    server = Server(triton_python, exports["uint8"], "--max-delay-ms", "2000")
    z = latents(3, MAX, 16)
    results = []

    def ask():
        try:
            client = http.InferenceServerClient(f"127.0.0.1:{server.http_port}")  # one per thread (gevent)
            results.append(_infer(client, http, server.name, z))
        except Exception as e:  # shown by the assertion below
            results.append(e)

    thread = threading.Thread(target=ask)
    thread.start()
    time.sleep(0.5)  # the request waits in Triton's queue (up to 2 s for company) when SIGTERM arrives
    code = server.stop()
    thread.join(timeout=60)
    assert isinstance(results[0], np.ndarray), f"{results[0]}; {Path(server.log.name).read_text()[-1500:]}"
    with Sampler(exports["uint8"], backend="onnxruntime") as sampler:
        np.testing.assert_array_equal(results[0], sampler.run(z))
    assert code == 0 and "Triton drained the requests in flight" in Path(server.log.name).read_text()


def test_tritons_own_parser_accepts_our_repository(triton_python, exports, tmp_path):
    """Triton in explicit model-control mode loads the repository `gandeploy triton` wrote: each config is
    accepted, and the one failure is the backend library this machine's Triton does not ship (its message,
    quoted)."""
    models = {"m_uint8": ("uint8", "fp32"), "m_cond_fp16": ("cond", "fp16"), "m_float": ("float", "fp32")}
    for name, (kind, precision) in models.items():
        code, output = cli("triton", str(exports[kind]), "--out", str(tmp_path / "repo"), "--name", name,
                           "--precision", precision, "--kind", "cpu")
        assert code == 0, output
    where = subprocess.run([triton_python, "-c", "import pytriton, pytriton.utils.distribution as d; "
                            "print(pytriton.__file__); print(d.get_libs_path())"],
                           capture_output=True, text=True, check=True).stdout.split()
    home = Path(where[0]).parent / "tritonserver"
    http_port, grpc_port, metrics = _ports(3)
    log = open(tmp_path / "tritonserver.log", "w")
    process = subprocess.Popen(
        [str(home / "bin" / "tritonserver"), f"--model-repository={tmp_path / 'repo'}", "--model-control-mode=explicit",
         f"--backend-directory={home / 'backends'}", f"--http-port={http_port}", f"--grpc-port={grpc_port}",
         f"--metrics-port={metrics}", "--exit-timeout-secs=5"], env={**os.environ, "LD_LIBRARY_PATH": where[1]},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        client = http.InferenceServerClient(f"127.0.0.1:{http_port}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.is_server_live():
                    break
            except Exception:
                time.sleep(0.3)
        for name in models:
            with pytest.raises(InferenceServerException) as caught:
                client.load_model(name)
            message = str(caught.value)
            assert "unable to find backend library for backend 'onnxruntime'" in message, message
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert all(index[n]["state"] == "UNAVAILABLE" and "onnxruntime" in index[n]["reason"] for n in models)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        log.close()


def test_a_python_that_cannot_host_tritons_stub_is_one_line(exports):
    """This test's own Python: pyenv's (its libpython is not the one the stub's linker finds) or one without
    nvidia-pytriton; either way one line that says what to use instead, exit 2, before anything starts."""
    from gandeploy.serve.triton_engine import check_python

    try:
        check_python()
    except Exception:
        pass
    else:
        pytest.skip(f"{sys.executable} can host Triton's stub: the refusal cannot be shown with it")
    code, output = cli("serve", str(exports["uint8"]), "--engine", "triton", "--port", "8999")
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert "--engine triton" in output and "--engine starlette" in output
