"""The quality table: FID, KID, precision and recall at N=10k of trained runs against the bundled MNIST digits.

    python bench/quality.py RUN [RUN ...] [--n 10000] [--seed 0] [--out bench/results/quality]

For each run folder: its generator/ (the best by FID when the run tracked FID, else the latest) is copied to
OUT/<recipe>/ (config.json + model.safetensors), sampled (images 0..n-1 of the seed; class-balanced labels k % 10
for a conditional generator) and measured against the first n of the 10,000 bundled digits with `gandeploy fid`'s
code. The real-vs-real floor is measured beside it from the same features: the first N/2 of those N digits against
the other N/2 (the bundle has 10,000 digits, so the floor at 10k vs 10k cannot be measured on it; FID's bias falls
roughly as 1/N, so the 10k floor is about half the 5k one). Rows are merged into OUT/results.json by recipe and
OUT/README.md is written again from all rows. Each row records the training command, steps, training wall time
(log.jsonl's elapsed_s: training only, evaluations and checkpoints excluded) and the wall time of its FID.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from gandeploy.bench import machine as bench_machine
from gandeploy.formats.files import atomic_path
from gandeploy.metrics import fid
from gandeploy.metrics.quality import kid, precision_recall
from gandeploy.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    facts = bench_machine()  # the facts gandeploy bench records
    return f"{facts['cpu']}, {facts['cores']} cores, {facts['gpu'] or 'no GPU'}"


def command_of(run: Path, recipe) -> str:
    """The training command that makes this run: the bundled recipe plus the overrides that differ from it."""
    from gandeploy.train import recipe_differences

    bundled = ROOT / "recipes" / f"{recipe.name}.yaml"
    command = f"gandeploy train recipes/{recipe.name}.yaml"
    if bundled.is_file():
        for key, _, value in recipe_differences(load_recipe(bundled).to_dict(), recipe.to_dict()):
            command += f" {key}={json.dumps(value) if not isinstance(value, str) else value}"
    return command


def training_record(run: Path) -> tuple[int, float]:
    last = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "elapsed_s" in record:
            last = record
    return int(last.get("step", 0)), float(last.get("elapsed_s", 0.0))


def measure_floor(real: np.ndarray) -> dict:
    half = len(real) // 2
    a, b = real[:half], real[half:]
    kid_mean, kid_std = kid(a, b)
    precision, recall = precision_recall(a, b)
    return {"n": half, "fid": fid.frechet_distance(*fid.statistics(a), *fid.statistics(b)), "kid": kid_mean,
            "kid_std": kid_std, "precision": precision, "recall": recall}


def shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def measure(run: Path, out: Path, n: int, seed: int, net, real: np.ndarray, floor: dict, note: str = "",
            save_features: Path | None = None) -> dict:
    recipe = load_recipe(run / "recipe.yaml")
    folder = out / recipe.name
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copyfile(run / "generator" / name, folder / name)
    config = json.loads((folder / "config.json").read_text())
    steps, train_s = training_record(run)
    start = time.perf_counter()
    images, what = fid.load_images(folder, n, seed)
    features = net(images, progress=True)
    if save_features is not None:  # float32 (n, 2048), for further comparisons without sampling again
        save_features.mkdir(parents=True, exist_ok=True)
        np.save(save_features / f"{recipe.name}-n{n}-seed{seed}.npy", features.astype(np.float32))
    kid_mean, kid_std = kid(real, features)
    precision, recall = precision_recall(real, features)
    value = fid.frechet_distance(*fid.statistics(features), *fid.statistics(real))
    fid_s = time.perf_counter() - start
    return {
        "recipe": recipe.name, "command": command_of(run, recipe), "steps": steps,
        "generator_step": config.get("step"), "selected_by": "fid" if "fid" in config else "latest",
        "train_wall_s": round(train_s, 1), "amp": config.get("amp"), "machine": machine(),
        "fid": value, "kid": kid_mean, "kid_std": kid_std, "precision": precision, "recall": recall,
        "n": len(features), "seed": seed, "real_n": len(real), "network": net.name, "fid_wall_s": round(fid_s, 1),
        "floor": floor, "generator": shown(folder), "note": note,
    }


def write_table(out: Path, rows: list[dict]) -> None:
    lines = ["# Quality table: bundled MNIST, N=10k", "",
             "Written by `python bench/quality.py RUN ...` (see its docstring). FID, KID (x 1e3, unbiased, +- std over",
             "100 subsets of 1,000) and improved precision/recall (k=3) of images 0..N-1 of seed 0 against the first N",
             "of the 10,000 bundled digits, on the Inception network of FID's definition. Each row's generator folder is",
             "committed beside this file: `gandeploy fid bench/results/quality/<recipe> --n 10000` measures it again.",
             "The models were trained on the same 10,000 digits they are measured against.", "",
             "| recipe | steps | training | FID | KID x1e3 | precision | recall | FID wall time | command |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes = [f"- {r['recipe']}: {r['note']}" for r in rows if r.get("note")]
    for r in rows:
        amp = f" ({r['amp']})" if r.get("amp") not in (None, "none") else ""  # the precision it trained in
        lines.append(f"| {r['recipe']} | {r['steps']:,} | {r['train_wall_s'] / 60:.1f} min{amp} | "
                     f"**{r['fid']:.2f}** | "
                     f"{r['kid'] * 1e3:.2f} +- {r['kid_std'] * 1e3:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['fid_wall_s'] / 60:.1f} min | `{r['command']}` |")
    if rows:
        f = rows[0]["floor"]
        if notes:
            lines += [""] + notes
        lines += ["", f"Real-vs-real floor (digits 0..{f['n'] - 1:,} against {f['n']:,}..{2 * f['n'] - 1:,}): "
                  f"FID {f['fid']:.2f}, KID x1e3 {f['kid'] * 1e3:.2f} +- {f['kid_std'] * 1e3:.2f}, "
                  f"precision {f['precision']:.3f}, recall "
                  f"{f['recall']:.3f}. At N vs N it would be about half that FID (bias ~ 1/N); the bundle has no "
                  f"second 10k digits to measure it at 10k.", "",
                  f"Machine: {rows[0]['machine']}; feature network: {rows[0]['network']}. Training time is "
                  f"log.jsonl's elapsed_s (training steps only; evaluations and checkpoints excluded), in float32 "
                  f"unless a precision is given (bf16: autocast on a CPU with AVX512-BF16)."]
    with atomic_path(out / "README.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "quality")
    parser.add_argument("--note", default="", help="A remark printed under the table for these runs' rows.")
    parser.add_argument("--save-features", type=Path, help="Also write each row's generated features here (.npy).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    net = fid.load_feature_net("cuda" if bench_machine()["gpu"] else "cpu")
    real = fid.real_features(fid.load_images("mnist", args.n)[0], net, progress=True)  # cached after the first run
    floor = measure_floor(real)
    results = args.out / "results.json"
    rows = {r["recipe"]: r for r in (json.loads(results.read_text()) if results.is_file() else [])}
    for run in args.runs:
        row = measure(run, args.out, args.n, args.seed, net, real, floor, args.note, args.save_features)
        rows[row["recipe"]] = row
        print(f"{row['recipe']}: FID {row['fid']:.2f}, KID {row['kid']:.5f} +- {row['kid_std']:.5f}, precision "
              f"{row['precision']:.3f}, recall {row['recall']:.3f} at N={row['n']} ({row['fid_wall_s']:.0f} s); "
              f"floor {floor['fid']:.2f} at {floor['n']} vs {floor['n']}", flush=True)
        ordered = sorted(rows.values(), key=lambda r: r["fid"])
        with atomic_path(results) as tmp:
            tmp.write_text(json.dumps(ordered, indent=1) + "\n")
        write_table(args.out, ordered)


if __name__ == "__main__":
    main()
