"""The serving side without the training stack: with torch unimportable, the Sampler samples on ONNX Runtime,
`gandeploy serve` answers, `gandeploy verify` checks, and every answer equals the one given with torch around."""

import io
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from gandeploy import Sampler

NO_TORCH = [sys.executable, str(ROOT / "tests" / "no_torch.py")]


def no_torch(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*NO_TORCH, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_sampler_runs_without_torch(exports, tmp_path):
    out = tmp_path / "images.npy"
    code = f"""
import numpy as np, sys
from gandeploy import Sampler
from gandeploy.runtime import BackendUnavailable
with Sampler({str(exports["uint8"])!r}) as s:
    assert s.info["backend"] == "onnxruntime", s.info
    np.save({str(out)!r}, s.sample(12, seed=5))
try:
    Sampler({str(exports["uint8"])!r}, backend="torch")
except BackendUnavailable as e:
    print("torch backend:", e)
print("heavy modules:", sorted(m for m in ("onnx", "safetensors", "gandeploy.train", "gandeploy.nets",
                                            "gandeploy.export", "gandeploy.artifacts") if m in sys.modules))
"""
    result = no_torch("-c", code)
    assert result.returncode == 0, result.stderr
    assert "torch backend: torch is not installed here" in result.stdout and "gandeploy[train]" in result.stdout
    assert "heavy modules: []" in result.stdout  # nothing below the serving line was imported
    with Sampler(exports["uint8"], backend="onnxruntime") as sampler:
        np.testing.assert_array_equal(np.load(out), sampler.sample(12, seed=5))


def test_verify_runs_without_torch(exports):
    result = no_torch("verify", str(exports["cond"]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED   onnxruntime fp32 on cpu" in result.stdout
    assert "PASSED   onnxruntime fp16 on cpu" in result.stdout
    assert "SKIPPED  torch fp32 on cpu: torch is not installed here" in result.stdout


def test_serve_answers_without_torch(exports):
    pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'gandeploy[serve]'")
    from http_server import Server

    server = Server(exports["cond"], launcher=NO_TORCH)
    try:
        status, _, body = server.get("/v1/generate?n=3&seed=9&labels=4&format=npy")
        assert status == 200, body
        with Sampler(exports["cond"], backend="onnxruntime") as sampler:
            np.testing.assert_array_equal(np.load(io.BytesIO(body)), sampler.sample(3, seed=9, labels=4))
    finally:
        server.stop()
    assert server.proc.returncode == 0, "".join(server.lines)


def test_training_commands_say_which_extra_they_need():
    result = no_torch("train", "recipes/dcgan_mnist.yaml")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: this command needs torch, which is not installed here; "
                                     "pip install 'gandeploy[train]'")
