import json

import pytest

from conftest import cli
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
    assert parity[("torch", "fp32")]["max_abs_err"] == 0
    assert all(p["passed"] for p in results["parity"])
    skipped = {(s["backend"], s["precision"]): s["reason"] for s in results["skipped"]}
    assert "tensorrt" in {b for b, _ in skipped} and all(skipped.values())
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Speed" in report and "## Parity against torch FP32" in report and "## Skipped" in report
    assert (tmp_path / "out" / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "fastest" in lines[0] or "fastest" in "\n".join(lines)
    if fid_samples:
        assert results["fid"]["n"] == 12 and results["fid"]["noise_floor"] >= 0 and "warning" in results["fid"]
        assert parity[("torch", "fp32")]["fid_delta"] == 0.0
        assert all("fid" in p and "fid_delta" in p for p in results["parity"])


def test_bench_bad_input(tiny_export, tmp_path):
    code, output = cli("bench", str(tiny_export), "--batch-sizes", "1,x", "--out", str(tmp_path))
    assert code == 2 and "--batch-sizes: '1,x' is not a comma list of integers" in output
    code, output = cli("bench", str(tiny_export), "--backends", "onnxruntime", "--out", str(tmp_path))
    assert code == 2 and "needs the torch fp32 reference" in output
    code, output = cli("bench", str(tmp_path / "nothing"))
    assert code == 2 and "not an export folder" in output
