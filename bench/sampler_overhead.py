"""What the Sampler costs on top of the runtime, and what its batching front buys.

Side by side in one run, on each export:
  1. `Sampler.sample(n, seed)` end to end (seed in, latents drawn, uint8 images out) against a bare
     `onnxruntime.InferenceSession.run` on the same ONNX with the same session options, also drawing its latents
     from the seed each call, at batch 1, 16, 64 and 256: images/s, and batch-1 latency p50.
  2. The batching front under 16 concurrent single-image callers, against the same backend on one batch of 16 and
     on 16 serial single-image calls, for ONNX Runtime and for torch.

    python bench/sampler_overhead.py [--export exports/dcgan_mnist --export exports/dcgan64_random]
                                     [--seconds 0.3] [--rounds 11]

The default exports are the demo generator (`make demo`, then `gandeploy export`) and DCGAN-64 (latent 100,
3x64x64: recipes/dcgan_celeba.yaml trained for 2 steps on random images, made here when missing). Figures are
medians over rounds; ratios are medians of the per-round ratios (each round times both sides back to back).
Writes bench/results/sampler_overhead-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from gandeploy import Sampler
from gandeploy.latents import latents
from gandeploy.runtime.backends.onnxruntime import session_options

BATCHES = (1, 16, 64, 256)
DCGAN64 = Path("exports/dcgan64_random")


def rate(call, images_per_call: int, seconds: float) -> float:
    """images/s of `call` repeated for about `seconds` (after one warm-up call)."""
    call()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        count += 1
    return count * images_per_call / (time.perf_counter() - start)


def p50_latency_ms(calls: dict, repeats: int = 400) -> dict:
    """Median latency of each call, the calls interleaved one by one so both see the same machine."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def concurrent_rate(sampler: Sampler, callers: int, seconds: float) -> float:
    """images/s with `callers` threads each submitting single-image requests back to back."""
    done = [0] * callers
    stop = time.perf_counter() + seconds
    barrier = threading.Barrier(callers)

    def caller(i):
        barrier.wait()
        seed = i * 1_000_000
        while time.perf_counter() < stop:
            sampler.submit(1, seed).result()
            seed += 1
            done[i] += 1

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def bare_session(onnx_path: Path) -> ort.InferenceSession:
    """The same session options as the Sampler's ONNX Runtime backend."""
    return ort.InferenceSession(str(onnx_path), session_options(), providers=["CPUExecutionProvider"])


def make_dcgan64(folder: Path) -> Path:
    """DCGAN-64 with the DCGAN paper's shapes (recipes/dcgan_celeba.yaml), 2 steps on random images: its speed is
    that of the trained network, and the bench measures nothing else."""
    import tempfile

    from gandeploy.export import ExportOptions, export
    from gandeploy.recipe import load_recipe
    from gandeploy.train import train

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "random.npz"
        np.savez(data, images=np.random.default_rng(0).integers(0, 256, (64, 64, 64, 3), dtype=np.uint8))
        recipe = load_recipe("recipes/dcgan_celeba.yaml", ["data.source=npz", f"data.path={data}", "data.workers=0",
                                                           "train.steps=2", "train.batch_size=8"])
        train(recipe, Path(tmp) / "run", device="cpu", progress=False)
        return export(Path(tmp) / "run", folder, ExportOptions(max_batch=256, opt_batch=64), log=print)


def measure(export: Path, seconds: float, rounds: int) -> dict:
    manifest = json.loads((export / "manifest.json").read_text())
    latent_dim = manifest["generator"]["latent_dim"]
    if manifest["generator"]["num_classes"]:
        raise SystemExit("use an unconditional export for this bench")
    session = bare_session(export / "generator.onnx")
    samplers = {"onnxruntime": Sampler(export, backend="onnxruntime"), "torch": Sampler(export, backend="torch")}
    ours = samplers["onnxruntime"]
    rows = {}
    for k in range(rounds):  # interleaved, and in alternating order: drift on a shared machine hits both alike
        for batch in BATCHES:
            sides = {"bare": lambda: session.run(None, {"z": latents(0, batch, latent_dim)}),
                     "sampler": lambda: ours.sample(batch, 0)}
            for side in (("bare", "sampler") if k % 2 == 0 else ("sampler", "bare")):
                rows.setdefault((side, batch), []).append(rate(sides[side], batch, seconds))
        p50 = p50_latency_ms({"bare": lambda: session.run(None, {"z": latents(0, 1, latent_dim)}),
                              "sampler": lambda: ours.sample(1, 0)})
        for side, value in p50.items():
            rows.setdefault((side, "p50"), []).append(value)
        for name, sampler in samplers.items():
            rows.setdefault((name, "front16"), []).append(concurrent_rate(sampler, 16, seconds))
            rows.setdefault((name, "batch16"), []).append(rate(lambda: sampler.sample(16, 0), 16, seconds))
            rows.setdefault((name, "serial16"), []).append(
                rate(lambda: [sampler.sample(1, k) for k in range(16)], 16, seconds))
    for sampler in samplers.values():
        sampler.close()
    med = {key: statistics.median(values) for key, values in rows.items()}

    def paired(a, b):  # median of per-round ratios: this shared machine drifts by tens of % between rounds
        return statistics.median(x / y for x, y in zip(rows[a], rows[b]))

    overhead = {str(b): {"bare_images_per_s": med[("bare", b)], "sampler_images_per_s": med[("sampler", b)],
                         "ratio": paired(("sampler", b), ("bare", b))} for b in BATCHES}
    latency = {"bare_p50_ms": med[("bare", "p50")], "sampler_p50_ms": med[("sampler", "p50")],
               "ratio": paired(("sampler", "p50"), ("bare", "p50"))}
    front = {name: {"front_16_callers_images_per_s": med[(name, "front16")],
                    "one_batch_of_16_images_per_s": med[(name, "batch16")],
                    "serial_16_single_images_per_s": med[(name, "serial16")],
                    "front_vs_batch16": paired((name, "front16"), (name, "batch16")),
                    "front_vs_serial": paired((name, "front16"), (name, "serial16"))} for name in samplers}
    return {"export": str(export), "generator": manifest["generator"], "overhead": overhead,
            "batch1_latency": latency, "batching_front": front, "raw": {f"{k[0]}/{k[1]}": v for k, v in rows.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", action="append", help="an unconditional export (repeatable)")
    parser.add_argument("--seconds", type=float, default=0.3, help="length of one timed window")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    exports = [Path(e) for e in args.export or ["exports/dcgan_mnist", str(DCGAN64)]]
    for export in exports:
        if export == DCGAN64 and not (export / "manifest.json").is_file():
            make_dcgan64(export)
        if not (export / "manifest.json").is_file():
            raise SystemExit(f"{export} is not an export: `make demo && gandeploy export` makes exports/dcgan_mnist")

    results = [measure(export, args.seconds, args.rounds) for export in exports]
    machine = {"cpu": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
               "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
               "numpy": np.__version__}
    report = {"seconds_per_window": args.seconds, "rounds": args.rounds, "machine": machine, "exports": results}
    out = Path(args.out) / "sampler_overhead-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    for r in results:
        g = r["generator"]
        print(f"\n{r['export']} (latent {g['latent_dim']}, {g['channels']}x{g['resolution']}x{g['resolution']})")
        print(f"{'batch':>6} {'bare session img/s':>20} {'Sampler.sample img/s':>22} {'ratio':>7}")
        for b, o in r["overhead"].items():
            print(f"{b:>6} {o['bare_images_per_s']:>20.0f} {o['sampler_images_per_s']:>22.0f} {o['ratio']:>7.3f}")
        lat = r["batch1_latency"]
        print(f"batch-1 p50 latency: bare {lat['bare_p50_ms']:.3f} ms, Sampler {lat['sampler_p50_ms']:.3f} ms "
              f"({lat['ratio']:.3f}x)")
        print(f"{'backend':<12} {'front, 16 callers':>18} {'one batch of 16':>16} {'16 serial calls':>16} "
              f"{'front/batch':>12} {'front/serial':>13}  (images/s)")
        for name, f in r["batching_front"].items():
            print(f"{name:<12} {f['front_16_callers_images_per_s']:>18.0f} {f['one_batch_of_16_images_per_s']:>16.0f} "
                  f"{f['serial_16_single_images_per_s']:>16.0f} {f['front_vs_batch16']:>12.2f} "
                  f"{f['front_vs_serial']:>13.2f}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
