"""`gandeploy bench`: speed and parity of every backend on one export, in one run, written as results.json,
report.md and throughput.png.

Speed is `Sampler.sample` end to end (seed in, uint8 images out), after a warm-up, over repeated timed windows.
Parity is against PyTorch FP32 on the same latents (paired) and, with FID, on the same seeds (distributional).
Where torch runs, the torch FP32 backend of this run is the paired reference of the others, and is itself judged
against the reference outputs stored in the export; without torch every backend is judged against those.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ArtifactError, UserError, first_line

SCHEMA_VERSION = 1
FID_DELTA_TARGET = 0.1
REAL_SEED = 2  # `--real EXPORT`: its torch images of this seed (rows use seed 0, the noise floor seed 1)
QUICK_FID_SAMPLES = 100  # --quick on 2 CPU cores: 5 x 100 images through Inception in about a minute


@dataclass
class BenchOptions:
    backends: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt")
    batch_sizes: tuple[int, ...] = (1, 8, 64, 256)
    fid_samples: int = 0  # 0: no FID
    real: str = "mnist"
    quick: bool = False
    window_s: float = 0.5
    windows: int = 5
    parity_samples: int = 256
    device: str = "auto"
    progress: bool = True


def configurations(backends) -> list[tuple[str, str]]:
    """(backend, precision) pairs to try; what cannot run here is reported as skipped."""
    pairs = []
    for backend in backends:
        pairs += [(backend, "fp32"), (backend, "fp16")]
    return pairs


def _torch():
    """torch where it is installed and can use the GPU we measure on; None otherwise (serving images)."""
    try:
        import torch
    except ImportError:
        return None
    return torch


def machine() -> dict:
    from .runtime.device import cuda_device_count

    facts = {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
             "platform": platform.platform(), "gandeploy": __version__, "numpy": np.__version__}
    for module in ("torch", "onnxruntime", "onnx", "tensorrt"):
        try:
            facts[module] = __import__(module).__version__
        except Exception:  # optional
            facts[module] = None
    facts["gpu"] = None
    if cuda_device_count():
        torch = _torch()
        if torch is not None and torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
            facts["cuda"] = torch.version.cuda
        else:
            facts["gpu"] = "CUDA GPU"
        facts["driver"] = _nvidia_driver()
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    try:
        return Path("/proc/driver/nvidia/version").read_text().split("Kernel Module")[1].split()[0]
    except (OSError, IndexError):
        return None


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_sampler(sampler, batch: int, options: BenchOptions, classes: int | None = None) -> dict:
    """images/s (median over windows) and per-call latency percentiles of sampler.sample(batch)."""
    args = {} if classes is None else {"labels": np.arange(batch) % classes}
    for _ in range(3):  # warm-up: first calls allocate, compile and tune
        sampler.sample(batch, 0, **args)
    rates, latencies = [], []
    for _ in range(options.windows):
        calls, start = 0, time.perf_counter()
        while True:
            t0 = time.perf_counter()
            sampler.sample(batch, calls, **args)
            latencies.append(time.perf_counter() - t0)
            calls += 1
            if time.perf_counter() - start >= options.window_s:
                break
        rates.append(calls * batch / (time.perf_counter() - start))
    ms = np.array(latencies) * 1000
    return {"images_per_s": statistics.median(rates),
            "latency_ms": {q: float(np.percentile(ms, p)) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))},
            "calls": len(latencies)}


def paired(reference: np.ndarray, images: np.ndarray, precision: str) -> dict:
    """Paired figures of uint8 images against the reference, with the export's tolerance and verdict."""
    from .formats.parity import measure

    figures = measure([("all", reference, images)], "uint8", precision).as_dict()
    figures.pop("per_batch")
    return figures


def run_bench(export_dir: str | Path, options: BenchOptions | None = None, out: str | Path | None = None,
              log=print) -> dict:
    """Benchmark every (backend, precision) on `export_dir`; write results.json, report.md, throughput.png."""
    from tqdm.auto import tqdm

    from .formats.manifest import load_export
    from .formats.references import load_references
    from .runtime import Sampler

    options = options or BenchOptions()
    export_dir = Path(export_dir)
    manifest = load_export(export_dir)
    if options.quick:
        options.window_s, options.windows, options.parity_samples = 0.2, 3, 64
    most = manifest["batch"]["max"]  # the largest batch the export was checked at (and its engines built for)
    if any(b > most for b in options.batch_sizes):
        log(f"batch sizes above {most}, the largest {export_dir} was checked at, are left out: "
            f"{', '.join(str(b) for b in options.batch_sizes if b > most)}")
        options.batch_sizes = tuple(b for b in options.batch_sizes if b <= most) or (most,)
    classes = manifest["generator"]["num_classes"] or None
    out = Path(out) if out is not None else Path("bench/results") / manifest["name"]
    results = {"schema_version": SCHEMA_VERSION, "export": str(export_dir), "name": manifest["name"],
               "machine": machine(), "options": {k: v for k, v in vars(options).items() if k != "progress"},
               "speed": [], "parity": [], "skipped": []}
    samplers = {}
    for backend, precision in configurations(options.backends):
        try:
            samplers[(backend, precision)] = Sampler(export_dir, backend=backend, precision=precision,
                                                     device=options.device, max_batch=max(options.batch_sizes))
        except ArtifactError:
            raise  # a damaged file of the export fails the bench, as it fails verify and serve
        except ValueError as e:  # SamplerError, BackendUnavailable: what this machine cannot run, and why
            results["skipped"].append({"backend": backend, "precision": precision, "reason": first_line(e)})
    if not samplers:
        raise UserError(f"no backend could run {export_dir} here: "
                        + "; ".join(f"{s['backend']} {s['precision']}: {s['reason']}" for s in results["skipped"]))
    refs = load_references(export_dir, manifest)
    torch = _torch()

    steps = len(samplers) * len(options.batch_sizes)
    bar = tqdm(total=steps, desc="speed", unit="run", disable=not options.progress)
    for (backend, precision), sampler in samplers.items():
        for batch in options.batch_sizes:
            gpu = torch is not None and torch.cuda.is_available() and backend == "torch"
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            row = {"backend": backend, "precision": precision, "device": sampler.info["device"],
                   "batch_size": batch, **time_sampler(sampler, batch, options, classes)}
            row["peak_rss_mb"] = _rss_mb()
            if gpu:
                row["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            results["speed"].append(row)
            bar.update(1)
    bar.close()

    results["parity"] = _parity_rows(samplers, refs, options.parity_samples, classes)
    if options.fid_samples and ("torch", "fp32") not in samplers:
        results["fid_skipped"] = "FID parity needs the torch fp32 backend as its reference (and torch for the network)"
    elif options.fid_samples:
        _fid_rows(results, samplers, options, classes)
    for sampler in samplers.values():
        sampler.close()
    write_reports(results, out)
    log(render_summary(results, out))
    return results


def _parity_rows(samplers: dict, refs, n: int, classes) -> list[dict]:
    """Paired parity per (backend, precision): against this run's torch FP32 on n images of seed 0 where torch runs,
    and against the export's stored references (PyTorch FP32 at export time) for torch FP32 itself and wherever
    torch is absent, so no backend is ever compared with itself."""
    from .formats.images import to_uint8

    def as_uint8(x, sampler):
        return x if refs.kind == "uint8" else to_uint8(x, sampler.config["value_range"])

    labels = None if classes is None else np.arange(n) % classes
    live = samplers.get(("torch", "fp32"))
    reference = live.sample(n, 0, labels) if live is not None else None
    rows = []
    for (backend, precision), sampler in samplers.items():
        if reference is None or (backend, precision) == ("torch", "fp32"):
            images = as_uint8(sampler.run(refs.z, refs.labels), sampler)
            against, count = "export references (torch fp32 at export time)", len(refs.z)
            figures = paired(as_uint8(refs.images, sampler), images, precision)
        else:
            against, count = "torch fp32 (this run)", n
            figures = paired(reference, sampler.sample(n, 0, labels), precision)
        rows.append({"backend": backend, "precision": precision, "n": count, "reference": against, **figures})
    return rows


def _fid_rows(results: dict, samplers: dict, options: BenchOptions, classes) -> None:
    """FID of each backend's images against the real data at the same N and seeds, its difference from torch FP32,
    and the noise floor: the FID difference between two seeds of torch FP32."""
    from tqdm.auto import tqdm

    from .metrics import fid

    n = options.fid_samples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = fid.load_feature_net(options.device if options.device != "auto" else
                                   samplers[("torch", "fp32")].info["device"])
    from .metrics.quality import kid

    # an export as the real side: its PyTorch FP32 images of a seed no row uses (distribution parity with ours)
    real_images, real_what = fid.load_images(options.real, n, seed=REAL_SEED, backend="torch")
    real_features = fid.real_features(real_images, net, progress=options.progress)
    real = fid.statistics(real_features)
    labels = None if classes is None else np.arange(n) % classes
    kids = {}

    def score(sampler, seed, key=None):
        features = net(sampler.sample(n, seed, labels))
        if key is not None:  # KID beside FID: unbiased, the one to read at small N
            kids[key] = kid(real_features, features)
        return fid.frechet_distance(*fid.statistics(features), *real)

    items = list(samplers.items())
    values = {}
    for (backend, precision), sampler in tqdm(items, desc="FID", unit="backend", disable=not options.progress):
        values[(backend, precision)] = score(sampler, 0, (backend, precision))
    reference = values[("torch", "fp32")]
    floor = abs(score(samplers[("torch", "fp32")], 1) - reference)
    results["fid"] = {"n": n, "real": real_what, "real_n": len(real_images), "network": net.name,
                      "noise_floor": floor, "target_abs_delta": FID_DELTA_TARGET,
                      "note": ("noise floor: |FID(torch fp32, seed 1) - FID(torch fp32, seed 0)| at this N; a "
                               "backend's |delta| below it cannot be told apart from torch fp32")}
    if n < fid.MIN_SAMPLES:
        results["fid"]["warning"] = f"N={n} is below {fid.MIN_SAMPLES}: FIDs are biased; compare only at equal N"
    for row in results["parity"]:
        key = (row["backend"], row["precision"])
        row["fid"] = values[key]
        row["fid_delta"] = values[key] - reference
        row["kid"], row["kid_std"] = kids[key]


# ---- reports ---------------------------------------------------------------------------------------------------------


def write_reports(results: dict, out: Path) -> None:
    from .formats.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "report.md", render_markdown(results))
    plot_throughput(results, out / "throughput.png")


def render_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [f"# gandeploy bench: {r['name']}", "",
             f"Export `{r['export']}`. Machine: {m['cpu']}, {m['cores']} cores, GPU {m['gpu'] or 'none'}"
             + (f" (driver {m.get('driver')}, CUDA {m.get('cuda')})" if m["gpu"] else "")
             + f"; torch {m['torch']}, onnxruntime {m['onnxruntime']}, tensorrt {m['tensorrt'] or 'not installed'}.",
             "", "## Speed (Sampler.sample end to end, uint8 images out)", "",
             "| backend | precision | device | batch | images/s | p50 ms | p90 ms | p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in r["speed"]:
        lat = s["latency_ms"]
        lines.append(f"| {s['backend']} | {s['precision']} | {s['device']} | {s['batch_size']} | "
                     f"{s['images_per_s']:,.0f} | {lat['p50']:.3f} | {lat['p90']:.3f} | {lat['p99']:.3f} |")
    lines += ["", "## Parity against torch FP32 (same latents)", "",
              "| backend | precision | against | max abs err (levels) | uint8 pixels differing | PSNR dB | FID | "
              "FID delta | KID | verdict |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in r["parity"]:
        psnr = "identical" if p["psnr_db"] is None else f"{p['psnr_db']:.1f}"
        fid_value = f"{p['fid']:.2f}" if "fid" in p else "-"
        delta = f"{p['fid_delta']:+.3f}" if "fid_delta" in p else "-"
        kid_value = f"{p['kid']:.4f} +- {p['kid_std']:.4f}" if "kid" in p else "-"
        verdict = "PASSED" if p["passed"] else "FAILED"
        lines.append(f"| {p['backend']} | {p['precision']} | {p['reference']} ({p['n']}) | {p['max_abs_err']} | "
                     f"{100 * p['uint8_differing']:.3g}% | "
                     f"{psnr} | {fid_value} | {delta} | {kid_value} | {verdict} ({p['tolerance']}) |")
    if "fid" in r:
        f = r["fid"]
        lines += ["", f"FID: N={f['n']} generated (seed 0) against N={f['real_n']} {f['real']}, network "
                  f"{f['network']}; noise floor {f['noise_floor']:.3f} ({f['note']}); target |delta| <= "
                  f"{f['target_abs_delta']}."]
        if "warning" in f:
            lines.append(f"Warning: {f['warning']}.")
    if "fid_skipped" in r:
        lines += ["", f"FID: not measured: {r['fid_skipped']}."]
    if r["skipped"]:
        lines += ["", "## Skipped", "", "| backend | precision | reason |", "| --- | --- | --- |"]
        lines += [f"| {s['backend']} | {s['precision']} | {s['reason']} |" for s in r["skipped"]]
    lines += ["", "![images/s against batch size](throughput.png)", ""]
    return "\n".join(lines)


def plot_throughput(results: dict, path: Path) -> bool:
    """images/s against batch size per backend, log scale; False (and no file) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    series = {}
    for s in results["speed"]:
        series.setdefault(f"{s['backend']} {s['precision']} ({s['device']})", []).append(
            (s["batch_size"], s["images_per_s"]))
    for label, points in series.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s (median)")
    ax.set_title(f"{results['name']}: Sampler.sample throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from .formats.files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return True


def render_summary(r: dict, out: Path) -> str:
    best = {}
    for s in r["speed"]:
        key = s["batch_size"]
        if key not in best or s["images_per_s"] > best[key]["images_per_s"]:
            best[key] = s
    lines = [f"bench {r['name']} -> {out}/ (results.json, report.md, throughput.png)"]
    lines += [f"  batch {b:>4}: fastest {s['backend']} {s['precision']} at {s['images_per_s']:,.0f} images/s"
              for b, s in sorted(best.items())]
    for p in r["parity"]:
        fid_part = f", FID {p['fid']:.2f} ({p['fid_delta']:+.3f})" if "fid" in p else ""
        lines.append(f"  {p['backend']} {p['precision']}: max {p['max_abs_err']} level(s){fid_part}  "
                     f"{'PASSED' if p['passed'] else 'FAILED'}")
    lines += [f"  skipped {s['backend']} {s['precision']}: {s['reason']}" for s in r["skipped"]]
    return "\n".join(lines)
