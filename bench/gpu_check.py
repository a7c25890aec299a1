"""`make gpu-check`: what to run on a machine with a GPU, in about 10 minutes, installing nothing.

    python bench/gpu_check.py [--out gpu-check.json] [--python .venv/bin/python]

Steps, each with its wall time, exit code and the tail of its output, into one JSON report:
  1. the tests marked `gpu` (TensorRT engines, CUDA buffers), then the Sampler tests (their TensorRT cases);
  2. the demo generator (bench/results/quality/dcgan_mnist, committed) and DCGAN-64 (made here, 2 training steps)
     exported with --trt: ONNX FP32/FP16 and TensorRT FP16 engines, each checked against PyTorch at export;
  3. `gandeploy verify` of both exports on this machine;
  4. `gandeploy bench --quick` of both on every backend that loads (torch, onnxruntime, tensorrt).
What this machine lacks (a GPU, TensorRT, cuda-python) shows as SKIPPED lines with the reason, not as failures.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "bench" / "results" / "quality" / "dcgan_mnist"


def step(name: str, command: list[str], timeout: int, report: list) -> subprocess.CompletedProcess | None:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        report.append({"step": name, "command": " ".join(command), "status": "TIMEOUT", "seconds": timeout})
        print(f"TIMEOUT  {name} (after {timeout} s)", flush=True)
        return None
    seconds = round(time.perf_counter() - start, 1)
    output = (done.stdout + done.stderr).strip().splitlines()
    last = " ".join(output[-3:]).lower()
    summary = (done.stdout.strip().splitlines() or [""])[-1].lower()  # pytest's: "12 skipped, 1073 deselected in 2 s"
    skipped = (done.returncode == 2 and any(w in last for w in ("tensorrt", "cuda", "gpu", "not installed"))) or \
        (done.returncode == 0 and "skipped" in summary and "passed" not in summary)  # pytest: all skipped
    status = "SKIPPED" if skipped else "PASSED" if done.returncode == 0 else "FAILED"
    report.append({"step": name, "command": " ".join(command), "status": status, "exit_code": done.returncode,
                   "seconds": seconds, "output_tail": output[-25:]})
    why = f": {output[-1][:200]}" if status != "PASSED" and output else ""
    print(f"{status:<8} {name} ({seconds} s){why}", flush=True)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu-check.json")
    parser.add_argument("--python", default=sys.executable, help="the Python of the venv to check")
    parser.add_argument("--exports", default="exports/gpu-check", help="where the two exports are written")
    a = parser.parse_args()
    py, gd = a.python, [a.python, "-m", "gandeploy"]
    folder = Path(a.exports)
    report: list = []
    started = time.perf_counter()

    step("gandeploy info", [*gd, "info"], 120, report)
    step("tests marked gpu", [py, "-m", "pytest", "-q", "-m", "gpu", "-rs"], 900, report)
    step("Sampler tests (TensorRT cases)", [py, "-m", "pytest", "-q", "-rs", "tests/runtime/test_sampler.py"], 900,
         report)
    demo, dcgan64 = folder / "dcgan_mnist", folder / "dcgan64_random"
    step("export demo --trt", [*gd, "export", str(DEMO), "--out", str(demo), "--trt"], 900, report)
    made = step("make DCGAN-64 (ONNX)", [py, "-c", "import sys; sys.path.insert(0, 'bench'); from pathlib import Path; "
                                         "from sampler_overhead import make_dcgan64; "
                                         f"make_dcgan64(Path({str(dcgan64)!r}))"], 900, report)
    if made is not None and made.returncode == 0:
        step("add TensorRT engine to DCGAN-64", [*gd, "export", str(dcgan64), "--trt"], 900, report)
    for export in (demo, dcgan64):
        if (export / "manifest.json").is_file():
            step(f"verify {export.name}", [*gd, "verify", str(export)], 600, report)
            step(f"bench {export.name}", [*gd, "bench", str(export), "--quick", "--backends",
                                          "torch,onnxruntime,tensorrt", "--batch-sizes", "1,64",
                                          "--out", str(folder / f"bench-{export.name}")], 900, report)
    result = {"machine": {"python": platform.python_version(), "platform": platform.platform()},
              "seconds": round(time.perf_counter() - started, 1), "steps": report,
              "summary": {s: sum(r["status"] == s for r in report) for s in ("PASSED", "FAILED", "SKIPPED", "TIMEOUT")}}
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['summary']} in {result['seconds']} s -> {a.out}")
    sys.exit(1 if result["summary"]["FAILED"] or result["summary"]["TIMEOUT"] else 0)


if __name__ == "__main__":
    main()
