"""Bulk generation against the Sampler itself: `gandeploy generate --format npz` end to end (latents, backend,
shard files with checksums, shards.json) vs `Sampler.sample` at its best batch size, side by side in one run.

    python bench/generate_speed.py [--export exports/dcgan_mnist --export exports/dcgan64_random] [--rounds 5]

Goal: generate >= 0.9x the Sampler's images/s. Rounds interleave both sides; figures are medians, the ratio the
median of per-round ratios. Writes bench/results/generate_speed-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from gandeploy import Sampler
from gandeploy.runtime.generate import Plan, write_shards


def sampler_rate(sampler: Sampler, batch: int, images: int) -> float:
    sampler.sample(batch, 0)  # warm-up
    start, done, seed = time.perf_counter(), 0, 1
    while done < images:
        sampler.sample(batch, seed)
        done, seed = done + batch, seed + 1
    return done / (time.perf_counter() - start)


def generate_rate(export: Path, images: int, shard_size: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_shards(export, Path(tmp) / "g", Plan(n=images, seed=0, label=None, format="npz", shard_size=shard_size),
                 backend="onnxruntime", progress=False, log=lambda _: None)
        return images / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", action="append")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="about how long each side runs per round")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    results = []
    for export in [Path(e) for e in args.export or ["exports/dcgan_mnist", "exports/dcgan64_random"]]:
        with Sampler(export, backend="onnxruntime") as sampler:
            best_batch, best = max(((b, sampler_rate(sampler, b, 4 * b)) for b in (64, 256)), key=lambda t: t[1])
            images = max(best_batch, int(best * args.seconds) // best_batch * best_batch)
            rows = {"sampler": [], "generate": []}
            for k in range(args.rounds):
                for side in (("sampler", "generate") if k % 2 == 0 else ("generate", "sampler")):
                    rate = sampler_rate(sampler, best_batch, images) if side == "sampler" else \
                        generate_rate(export, images, shard_size=min(4096, images))
                    rows[side].append(rate)
        ratio = statistics.median(g / s for g, s in zip(rows["generate"], rows["sampler"]))
        results.append({"export": str(export), "best_batch": best_batch, "images_per_round": images,
                        "sampler_images_per_s": statistics.median(rows["sampler"]),
                        "generate_npz_images_per_s": statistics.median(rows["generate"]), "ratio": ratio, "raw": rows})
        print(f"{export}: Sampler.sample at batch {best_batch}: {results[-1]['sampler_images_per_s']:,.0f} img/s; "
              f"generate npz: {results[-1]['generate_npz_images_per_s']:,.0f} img/s; ratio {ratio:.3f} "
              f"(goal >= 0.9)")
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "onnxruntime": ort.__version__, "numpy": np.__version__},
              "rounds": args.rounds, "results": results}
    out = Path(args.out) / "generate_speed-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
