import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, cli
from gandeploy.artifacts import load_generator
from gandeploy.bench import BenchOptions, run_bench
from gandeploy.export import ExportOptions, export


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory):
    return export(tiny_run, tmp_path_factory.mktemp("bench") / "e", ExportOptions(max_batch=64, opt_batch=8),
                  log=lambda _: None)


def test_bench_writes_results_report_and_plot(tiny_export, tmp_path, monkeypatch):
    from gandeploy.metrics import fid

    monkeypatch.setenv("GANDEPLOY_CACHE", str(tmp_path / "cache"))
    try:
        fid.load_feature_net("cpu")
        fid_samples = 12
    except ValueError:
        fid_samples = 0  # the FID network is not installed here: the rest still runs
    options = BenchOptions(batch_sizes=(1, 8), fid_samples=fid_samples, quick=True, device="cpu", progress=False)
    lines = []
    results = run_bench(tiny_export, options, tmp_path / "out", log=lines.append)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["speed"] == results["speed"] and on_disk["machine"]["cores"] >= 1
    speed = {(s["backend"], s["precision"], s["batch_size"]): s for s in results["speed"]}
    assert set(speed) >= {("torch", "fp32", 1), ("torch", "fp32", 8), ("onnxruntime", "fp32", 8),
                          ("onnxruntime", "fp16", 1)}
    for row in results["speed"]:
        lat = row["latency_ms"]
        assert row["images_per_s"] > 0 and 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    parity = {(p["backend"], p["precision"]): p for p in results["parity"]}
    # torch fp32 is judged against the outputs stored at export time, the others against torch fp32 of this run
    assert parity[("torch", "fp32")]["reference"].startswith("export references")
    assert parity[("torch", "fp32")]["n"] == 32 and parity[("torch", "fp32")]["max_abs_err"] <= 1
    assert parity[("onnxruntime", "fp32")]["reference"] == "torch fp32 (this run)"
    assert parity[("onnxruntime", "fp16")]["psnr_db"] is None or parity[("onnxruntime", "fp16")]["psnr_db"] > 40
    assert all(p["passed"] for p in results["parity"])
    skipped = {(s["backend"], s["precision"]): s["reason"] for s in results["skipped"]}
    assert "tensorrt" in {b for b, _ in skipped} and all(skipped.values())
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Speed" in report and "## Parity against torch FP32" in report and "## Skipped" in report
    assert (tmp_path / "out" / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fastest" in lines[0] or "fastest" in "\n".join(lines)
    if fid_samples:
        assert results["fid"]["n"] == 12 and results["fid"]["noise_floor"] >= 0 and "warning" in results["fid"]
        assert all(np.isfinite(p["fid"]) and np.isfinite(p["fid_delta"]) for p in results["parity"])
        assert all(np.isfinite(p["kid"]) and p["kid_std"] >= 0 for p in results["parity"])
        assert "| KID |" in report
        ort = parity[("onnxruntime", "fp32")]
        assert ort["fid_delta"] == ort["fid"] - parity[("torch", "fp32")]["fid"]


def test_bench_bad_input(tiny_export, tmp_path):
    code, output = cli("bench", str(tiny_export), "--batch-sizes", "1,x", "--out", str(tmp_path))
    assert code == 2 and "--batch-sizes: '1,x' is not a comma list of integers" in output
    code, output = cli("bench", str(tiny_export), "--backends", "tflite", "--out", str(tmp_path))
    assert code == 2 and "no backend could run" in output and "'tflite' is not one of" in output
    code, output = cli("bench", str(tmp_path / "nothing"))
    assert code == 2 and "not an export folder" in output


def test_perturbed_outputs_fail_parity(tiny_export):
    """Real outputs of two backends agree; the same outputs with a real perturbation (two grey levels added to a
    block of pixels) fail the stated tolerance."""
    from gandeploy import Sampler
    from gandeploy.bench import paired

    with Sampler(tiny_export, backend="torch") as torch_sampler, Sampler(tiny_export, backend="onnxruntime") as ort:
        reference, images = torch_sampler.sample(16, 0), ort.sample(16, 0)
    assert paired(reference, images, "fp32")["passed"]
    perturbed = images.copy()
    perturbed[:, 10:14, 10:14] = np.clip(perturbed[:, 10:14, 10:14].astype(int) + 2, 0, 255).astype(np.uint8)
    verdict = paired(reference, perturbed, "fp32")
    assert not verdict["passed"] and verdict["max_abs_err"] == 2
    noisy = np.clip(images.astype(int) + np.random.default_rng(0).integers(-40, 41, images.shape), 0, 255)
    assert not paired(reference, noisy.astype(np.uint8), "fp16")["passed"]  # far below 40 dB


def test_bench_without_torch_judges_against_the_stored_references(tiny_export, tmp_path):
    """A serving machine without torch: every backend is judged against the PyTorch outputs made at export time."""
    options = BenchOptions(backends=("onnxruntime",), batch_sizes=(4,), quick=True, device="cpu", progress=False)
    results = run_bench(tiny_export, options, tmp_path / "out", log=lambda _: None)
    rows = {(p["backend"], p["precision"]): p for p in results["parity"]}
    assert set(rows) == {("onnxruntime", "fp32"), ("onnxruntime", "fp16")}
    for row in rows.values():
        assert row["reference"].startswith("export references") and row["n"] == 32 and row["passed"]
    assert rows[("onnxruntime", "fp32")]["max_abs_err"] <= 1


def test_quality_table_rows_can_be_measured_again_from_their_generator_folder(fid_net, tiny_run, tmp_path):
    out = tmp_path / "quality"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), str(tiny_run), "--n", "24",
                             "--out", str(out), "--note", "a tiny run"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads((out / "results.json").read_text())
    assert row["n"] == 24 and row["seed"] == 0 and row["steps"] == 4 and row["floor"]["n"] == 12
    assert row["command"].startswith("gandeploy train recipes/dcgan_mnist.yaml") and "train.steps=4" in row["command"]
    assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 and math.isfinite(row["kid"])
    generator = Path(row["generator"])
    assert sorted(p.name for p in generator.iterdir()) == ["config.json", "model.safetensors"]
    table = (out / "README.md").read_text()
    assert f"**{row['fid']:.2f}**" in table and "a tiny run" in table
    code, output = cli("fid", str(generator), "--n", "24")  # the claim, measured again by anyone
    assert code == 0 and f"FID {row['fid']:.2f}  (" in output


def test_committed_quality_rows_name_their_recipe_and_a_loadable_generator():
    """Every row of bench/results/quality/results.json names a shipped recipe and a generator folder that loads."""
    rows = json.loads((ROOT / "bench" / "results" / "quality" / "results.json").read_text())
    assert {"dcgan_mnist_long", "dcgan_mnist", "wgan_gp_mnist", "cdcgan_mnist"} <= {r["recipe"] for r in rows}
    for row in rows:
        assert (ROOT / "recipes" / f"{row['recipe']}.yaml").is_file()
        assert row["n"] == 10_000 and row["seed"] == 0 and row["fid"] > row["floor"]["fid"]
        model, config = load_generator(ROOT / row["generator"])
        assert config["num_classes"] == (10 if row["recipe"] == "cdcgan_mnist" else 0)
        labels = torch.arange(2) if config["num_classes"] else None
        assert model(torch.zeros(2, config["latent_dim"]), labels).shape == (2, 1, 28, 28)
