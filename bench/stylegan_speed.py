"""StyleGAN on the CPU: NVIDIA's own code in eager float32 vs gandeploy's PyTorch module vs ONNX Runtime FP32 and
FP16 (through `gandeploy.Sampler`), side by side in one run, with each engine's peak memory.

    python bench/stylegan_speed.py --stylegan2-ada /work/nvlabs/stylegan2-ada-pytorch \\
        --stylegan3 /work/nvlabs/stylegan3 --nvidia-python /work/nvenv/bin/python \\
        [--kinds stylegan2,stylegan3-t,stylegan3-r] [--resolutions 64,256] [--batches 1,8] [--threads 2] [--quick]

For each kind and resolution a random-init generator is built with NVIDIA's own classes, sized as their train.py
configures it (stylegan2: stylegan2-ada-pytorch `--cfg=paper256`, z/w 512, 8 mapping layers, channel_base 16384,
channel_max 512, conv_clamp 256, 4 fp16 resolutions; stylegan3-t/-r: stylegan3 `--cfg=stylegan3-t/-r`, channel_base
32768 (x2 for -r), channel_max 512 (x2 for -r), 2 mapping layers; `--channel-base KIND@RES=N` shrinks a network that
is too slow for the CPU at hand, and the results say so). It is pickled the way NVIDIA's training loop writes a
snapshot (`pickle.dump(dict(G=..., G_ema=..., ...))` through their persistence), read back by gandeploy's restricted
reader and exported with `export_stylegan` (float output, FP16 twin). Then, with the same z for every engine:

  nvidia-eager  NVIDIA's G(z, c, truncation_psi=1, noise_mode='const', force_fp32=True), eval, no_grad
  ours-torch    gandeploy's module (`load_stylegan_module`), eval, no_grad
  ort-fp32      gandeploy.Sampler(export, backend="onnxruntime", precision="fp32").run(z)
  ort-fp16      the same with precision="fp16"

Every (engine, kind, resolution, batch) runs in a fresh subprocess (`--worker`), so that its peak RSS is its own and
stylegan2-ada-pytorch and stylegan3 (whose packages share names) never meet; NVIDIA's workers run with
--nvidia-python (their code needs pkg_resources, i.e. setuptools < 81). All engines get the same thread count
(torch.set_num_threads and ONNX Runtime's intra_op_num_threads). Figures: a warm-up call, then the median of
--repeats timed calls (fewer when a case runs past --case-seconds, never fewer than 2); images/s, ms per batch,
the ratio of images/s to nvidia-eager's, peak RSS of the worker (whole process) and its peak while running
(after loading), the worker's CPU use (busy cores = CPU time / wall time; < threads means other jobs took the
CPU), the load average before and after, and the largest difference of each engine's images from NVIDIA's.
A profile of ONNX Runtime (and of our PyTorch module) at batch 1 groups the time by kind of node: where the
graph's time goes.

Goal (the StyleGAN export issue): ONNX Runtime >= 2x NVIDIA's eager code at batch 1.
Writes bench/results/stylegan_speed-cpu.json, .md and .png (with --quick: stylegan_speed-cpu-quick.*);
`--render FILE.json` rewrites the .md and .png of a results file.

Time: the recorded run (--cases stylegan2@64,stylegan2@256,stylegan3-t@64,stylegan3-t@256,stylegan3-r@64) took
43 minutes on 2 cores that other jobs shared (load average 3-6, each worker got about one core); the four networks
of the default --kinds x --resolutions took 31 of them, mostly NVIDIA's and our PyTorch StyleGAN3 at batch 8 and
the exports' 32 reference images. --max-minutes stops adding networks; --quick is a 4-minute smoke run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("nvidia-eager", "ours-torch", "ort-fp32", "ort-fp16")
KINDS = {  # kind -> (checkout option, NVIDIA's class)
    "stylegan2": ("stylegan2_ada", "training.networks.Generator"),
    "stylegan3-t": ("stylegan3", "training.networks_stylegan3.Generator"),
    "stylegan3-r": ("stylegan3", "training.networks_stylegan3.Generator"),
}
# what NVIDIA's train.py gives each kind (stylegan2: stylegan2-ada-pytorch --cfg=paper256; stylegan3: --cbase/--cmax
# defaults, doubled by --cfg=stylegan3-r)
REALISTIC_CHANNEL_BASE = {"stylegan2": 16384, "stylegan3-t": 32768, "stylegan3-r": 65536}
# 2 CPU cores shared with other jobs cannot run a realistic StyleGAN3 through export (32 reference images) and four
# engines in minutes: these defaults shrink it (the results record both numbers); pass --channel-base to change them
DEFAULT_CHANNEL_BASE = {"stylegan3-t@64": 8192, "stylegan3-t@256": 4096, "stylegan3-r@64": 8192,
                        "stylegan3-r@256": 4096}
QUICK_CHANNEL_BASE = {"stylegan2": 4096, "stylegan3-t": 1024, "stylegan3-r": 2048}
SEED = 1234


# ----------------------------------------------------------------------------------------------------------------
# small helpers (stdlib only at import time: the workers run under two different interpreters)


def rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> bool:
    """Linux >= 4.0: make VmHWM the current RSS, so a later VmHWM is the peak of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def loadavg() -> list[float]:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def latents(batch: int):
    import numpy as np

    return np.random.default_rng(SEED).standard_normal((batch, 512)).astype(np.float32)


def timed(fn, repeats: int, warmup: int, budget_s: float) -> dict:
    """Warm up, then up to `repeats` timed calls (at least 2, fewer than `repeats` once `budget_s` is spent)."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    cpu0, start = os.times(), time.perf_counter()
    while len(times) < repeats and (len(times) < 2 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    cpu1 = os.times()
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    return {"times_s": times, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "busy_cores": cpu / wall if wall > 0 else None, "output": out}


def set_torch_threads(threads: int):
    import torch

    torch.set_num_threads(threads)
    return torch


# ----------------------------------------------------------------------------------------------------------------
# workers


def nvidia_generator_kwargs(kind: str, res: int, channel_base: int) -> dict:
    """The G_kwargs NVIDIA's train.py builds for this kind (with c_dim/img_resolution/img_channels of the data)."""
    if kind == "stylegan2":  # stylegan2-ada-pytorch train.py, --cfg=paper256
        return {"z_dim": 512, "w_dim": 512, "mapping_kwargs": {"num_layers": 8},
                "synthesis_kwargs": {"channel_base": channel_base, "channel_max": 512, "num_fp16_res": 4,
                                     "conv_clamp": 256},
                "c_dim": 0, "img_resolution": res, "img_channels": 3}
    kwargs = {"z_dim": 512, "w_dim": 512, "mapping_kwargs": {"num_layers": 2}, "channel_base": channel_base,
              "channel_max": 512, "magnitude_ema_beta": 0.5 ** (32 / (20 * 1e3)),  # --batch=32
              "c_dim": 0, "img_resolution": res, "img_channels": 3}
    if kind == "stylegan3-r":
        kwargs.update(channel_max=1024, conv_kernel=1, use_radial_filters=True)
    return kwargs


def worker_build(spec: dict) -> dict:
    """(NVIDIA python) a random-init G with NVIDIA's class, pickled as their training loop snapshots it."""
    import pickle

    sys.path.insert(0, spec["repo"])
    torch = set_torch_threads(spec["threads"])
    import dnnlib

    torch.manual_seed(SEED)
    kwargs = nvidia_generator_kwargs(spec["kind"], spec["res"], spec["channel_base"])
    easy = {k: dnnlib.EasyDict(v) if isinstance(v, dict) else v for k, v in kwargs.items()}
    G = dnnlib.util.construct_class_by_name(class_name=KINDS[spec["kind"]][1], **easy).train().requires_grad_(False)
    G_ema = copy.deepcopy(G).eval()
    snapshot = {"G": G, "G_ema": G_ema, "augment_pipe": None,
                "training_set_kwargs": dict(dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                            resolution=spec["res"], use_labels=False))}
    for key, value in snapshot.items():  # what training_loop.py does before pickle.dump
        if isinstance(value, torch.nn.Module):
            snapshot[key] = copy.deepcopy(value).eval().requires_grad_(False).cpu()
    with open(spec["pickle"], "wb") as f:
        pickle.dump(snapshot, f)
    return {"parameters": sum(p.numel() for p in G_ema.parameters()),
            "pickle_mb": os.path.getsize(spec["pickle"]) / 2**20, "init_kwargs": kwargs, "torch": torch.__version__}


def worker_export(spec: dict) -> dict:
    """(our python) the pickle through gandeploy's restricted reader into an export; FLOPs of one image."""
    torch = set_torch_threads(spec["threads"])
    from gandeploy.export.exporter import ExportOptions
    from gandeploy.export.stylegan import export_stylegan, load_stylegan_module

    lines = []
    lo, opt, hi = spec["export_batches"]
    t = time.perf_counter()
    export_stylegan(spec["pickle"], spec["export"], psi=1.0, noise_mode="const",
                    options=ExportOptions(min_batch=lo, opt_batch=opt, max_batch=hi, output="float"), log=lines.append)
    seconds = time.perf_counter() - t
    manifest = json.loads((Path(spec["export"]) / "manifest.json").read_text())
    result = {"seconds": seconds, "log": lines, "parity": manifest.get("parity")}
    try:  # FLOPs (multiply-add = 2) of one image, by torch's counter: dense convs vs depthwise (FIR) convs
        from torch.utils.flop_counter import FlopCounterMode

        G = load_stylegan_module(spec["pickle"]).requires_grad_(False)
        counts = {"dense_conv": 0, "depthwise_conv": 0, "other": 0}
        with FlopCounterMode(display=False) as counter:
            G(torch.from_numpy(latents(1)), None)
        total = counter.get_total_flops()
        # dense vs depthwise (FIR) convolutions: count what our module hands F.conv2d ("other": transposed convs,
        # matmuls)
        import torch.nn.functional as F

        original = F.conv2d

        def counting(x, w, *a, groups=1, **k):
            y = original(x, w, *a, groups=groups, **k)
            flops = 2 * y.numel() * w.shape[1] * w.shape[2] * w.shape[3]
            counts["depthwise_conv" if groups > 1 and w.shape[1] == 1 else "dense_conv"] += flops
            return y

        F.conv2d = counting
        try:
            G(torch.from_numpy(latents(1)), None)
        finally:
            F.conv2d = original
        counts["other"] = total - counts["dense_conv"] - counts["depthwise_conv"]
        result["gflop_per_image"] = total / 1e9
        result["gflop_split"] = {k: v / 1e9 for k, v in counts.items()}
    except Exception as e:  # optional figure
        result["gflop_error"] = f"{type(e).__name__}: {e}"
    return result


def worker_time(spec: dict) -> dict:
    """One engine, one case: load, warm up, time; peak RSS of the process and of the run."""
    import numpy as np

    engine, threads, batch = spec["engine"], spec["threads"], spec["batch"]
    z = latents(batch)
    info = {}
    if engine == "nvidia-eager":
        sys.path.insert(0, spec["repo"])
        torch = set_torch_threads(threads)
        import pickle

        with open(spec["pickle"], "rb") as f:
            G = pickle.load(f)["G_ema"].eval().requires_grad_(False)
        zt, c = torch.from_numpy(z), torch.zeros([batch, 0])

        def fn():
            with torch.no_grad():
                return G(zt, c, truncation_psi=1, noise_mode="const", force_fp32=True).numpy()
        info["torch"] = torch.__version__
    elif engine == "ours-torch":
        torch = set_torch_threads(threads)
        from gandeploy.export.stylegan import load_stylegan_module

        G = load_stylegan_module(spec["pickle"]).eval().requires_grad_(False)
        zt = torch.from_numpy(z)

        def fn():
            with torch.no_grad():
                return G(zt, None, truncation_psi=1, noise_mode="const").numpy()
        info["torch"] = torch.__version__
    else:
        import onnxruntime as ort

        from gandeploy import Sampler

        sampler = Sampler(spec["export"], backend="onnxruntime", device="cpu",
                          precision="fp16" if engine == "ort-fp16" else "fp32", max_batch=max(8, batch),
                          threads=threads)
        assert sampler.backend.session.get_session_options().intra_op_num_threads == threads

        def fn():
            return sampler.run(z)
        info["onnxruntime"] = ort.__version__
    rss_loaded, reset = rss_mb(), reset_peak_rss()
    figures = timed(fn, spec["repeats"], spec["warmup"], spec["budget_s"])
    out = figures.pop("output")
    np.save(spec["output"], np.asarray(out, dtype=np.float32))
    return {**info, **figures, "rss_loaded_mb": rss_loaded,
            "run_peak_rss_mb": rss_mb("VmHWM") if reset else None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "output_shape": list(np.shape(out))}


def _ort_category(op: str, shapes: list) -> str:
    dims = [list(s.values())[0] if isinstance(s, dict) and s else [] for s in shapes]
    if op in ("Conv", "FusedConv", "NhwcFusedConv", "NhwcConv"):
        w = dims[1] if len(dims) > 1 else []
        if len(w) == 4 and w[1] == 1 and dims[0] and len(dims[0]) == 4 and w[0] == dims[0][1]:
            return f"{op} depthwise {w[2]}x{w[3]} (FIR filter)"
        return f"{op} dense {w[2]}x{w[3]}" if len(w) == 4 else op
    if op == "Pad":
        return "Pad 6-D (zero insertion)" if dims and len(dims[0]) == 6 else f"Pad {len(dims[0]) if dims else '?'}-D"
    return op


def worker_profile(spec: dict) -> dict:
    """Where the time goes at batch 1: ONNX Runtime's node profile grouped by kind of node, or torch's profiler."""
    engine, threads = spec["engine"], spec["threads"]
    z = latents(spec["batch"])
    if engine.startswith("ort"):
        import onnxruntime as ort

        from gandeploy.formats.manifest import FP16_FILE, FP32_FILE
        from gandeploy.runtime.backends.onnxruntime import session_options

        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(spec["output"]).with_suffix(""))
        file = FP16_FILE if engine == "ort-fp16" else FP32_FILE
        session = ort.InferenceSession(str(Path(spec["export"]) / file), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        runs = spec["repeats"]
        for _ in range(runs + 1):
            session.run(None, {name: z})
        trace_file = Path(session.end_profiling())
        trace = json.loads(trace_file.read_text())
        trace_file.unlink(missing_ok=True)
        runs_seen = [e for e in trace if e.get("name") == "model_run"]
        per_run = [e["dur"] for e in runs_seen][1:]  # the first run is the warm-up
        first_ts = runs_seen[1]["ts"] if len(runs_seen) > 1 else 0
        groups, nodes = {}, {}
        for e in trace:
            if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first_ts:
                continue
            args = e.get("args", {})
            cat = _ort_category(args.get("op_name", "?"), args.get("input_type_shape", []))
            g = groups.setdefault(cat, {"ms": 0.0, "nodes": 0})
            g["ms"] += e["dur"] / 1000 / max(1, len(per_run))
            g["nodes"] += 1
            key = e["name"][: -len("_kernel_time")]
            n = nodes.setdefault(key, {"op": args.get("op_name"), "category": cat, "ms": 0.0,
                                       "inputs": args.get("input_type_shape"),
                                       "outputs": args.get("output_type_shape")})
            n["ms"] += e["dur"] / 1000 / max(1, len(per_run))
        for g in groups.values():
            g["nodes"] = g["nodes"] // max(1, len(per_run))
        total = sum(g["ms"] for g in groups.values())
        ranked = dict(sorted(groups.items(), key=lambda kv: -kv[1]["ms"]))
        for g in ranked.values():
            g["share"] = g["ms"] / total if total else None
        return {"run_ms_median": statistics.median(per_run) / 1000 if per_run else None, "kernel_ms": total,
                "by_category": ranked, "top_nodes": sorted(nodes.values(), key=lambda n: -n["ms"])[:15]}
    torch = set_torch_threads(threads)
    if engine == "ours-torch":
        from gandeploy.export.stylegan import load_stylegan_module

        G = load_stylegan_module(spec["pickle"]).eval().requires_grad_(False)
        call = lambda: G(torch.from_numpy(z), None, truncation_psi=1, noise_mode="const")  # noqa: E731
    else:
        sys.path.insert(0, spec["repo"])
        import pickle

        with open(spec["pickle"], "rb") as f:
            G = pickle.load(f)["G_ema"].eval().requires_grad_(False)
        c = torch.zeros([len(z), 0])
        call = lambda: G(torch.from_numpy(z), c, truncation_psi=1, noise_mode="const", force_fp32=True)  # noqa: E731
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        call()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(spec["repeats"]):
                call()
    runs = spec["repeats"]
    rows = []
    for ev in prof.key_averages(group_by_input_shape=True):
        if ev.self_cpu_time_total <= 0:
            continue
        rows.append({"op": ev.key, "self_ms": ev.self_cpu_time_total / 1000 / runs,
                     "calls": ev.count // runs, "shapes": str(ev.input_shapes)[:160]})
    rows.sort(key=lambda r: -r["self_ms"])
    by_op = {}
    for r in rows:
        cat = r["op"]
        if "conv" in cat.lower() or cat == "aten::thnn_conv2d":
            shapes = re.findall(r"\[(\d+(?:, \d+)*)\]", r["shapes"])
            w = [int(v) for v in shapes[1].split(", ")] if len(shapes) > 1 else []
            x = [int(v) for v in shapes[0].split(", ")] if shapes else []
            if len(w) == 4 and w[1] == 1 and len(x) == 4 and x[1] == w[0] and w[0] > 1:
                cat += f" depthwise {w[2]}x{w[3]} (FIR filter)"
            elif len(w) == 4:
                cat += f" dense {w[2]}x{w[3]}"
        by_op.setdefault(cat, 0.0)
        by_op[cat] += r["self_ms"]
    total = sum(by_op.values())
    return {"self_ms_total": total, "by_category": {k: {"ms": v, "share": v / total if total else None}
                                                    for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:20]},
            "top_ops": rows[:15]}


WORKERS = {"build": worker_build, "export": worker_export, "time": worker_time, "profile": worker_profile}


# ----------------------------------------------------------------------------------------------------------------
# orchestration


def run_worker(mode: str, spec: dict, python: str, timeout: float, log) -> dict:
    env = dict(os.environ)
    threads = str(spec["threads"])
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
               PYTHONWARNINGS="ignore")
    before, t = loadavg(), time.perf_counter()
    try:
        proc = subprocess.run([python, str(Path(__file__).resolve()), "--worker", mode, "--spec", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        log(f"    {mode} timed out after {timeout:.0f} s")
        return {"error": f"timed out after {timeout:.0f} s", "load_before": before, "load_after": loadavg()}
    wall = time.perf_counter() - t
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
        log(f"    {mode} failed (rc {proc.returncode}): {tail}")
        return {"error": tail, "stderr_tail": proc.stderr[-3000:], "load_before": before, "load_after": loadavg()}
    result = json.loads(lines[-1][len("RESULT "):])
    result.update(worker_wall_s=wall, load_before=before, load_after=loadavg())
    return result


def machine_info(args) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        flags = set(fields.get("Flags", "").split())
        info.update(model_name=fields.get("Model name"), vendor=fields.get("Vendor ID"),
                    cores_per_socket=fields.get("Core(s) per socket"),
                    threads_per_core=fields.get("Thread(s) per core"),
                    hypervisor=fields.get("Hypervisor vendor"),
                    flags={f: f in flags for f in ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni",
                                                   "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")})
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["memory_gib"] = round(int(mem) / 2**20, 1)
    except OSError:
        pass
    return info


def versions(args) -> dict:
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    import gandeploy

    out = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
           "numpy": np.__version__, "gandeploy": gandeploy.__version__, "gandeploy_commit": git_head(REPO),
           "nvidia_python": args.nvidia_python}
    try:
        out["nvidia_python_torch"] = subprocess.run(
            [args.nvidia_python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
            timeout=120).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def git_head(path: Path) -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return (head + ("+dirty" if dirty else "")) if head else None
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_commit(path: Path) -> str | None:
    head = git_head(path)
    if head:
        return head
    listing = path.parent / "COMMITS.txt"  # checkouts without .git: the list next to them
    if listing.is_file():
        for line in listing.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].split("/")[-1] == path.name:
                return parts[1]
    return None


def channel_base_for(kind: str, res: int, args) -> int:
    if f"{kind}@{res}" in args.channel_base:
        return args.channel_base[f"{kind}@{res}"]
    if args.quick:
        return QUICK_CHANNEL_BASE[kind]
    return DEFAULT_CHANNEL_BASE.get(f"{kind}@{res}", REALISTIC_CHANNEL_BASE[kind])


def compare(outputs: dict) -> dict:
    """max |engine - nvidia| and PSNR over the [-1, 1] range (peak-to-peak 2), from the saved first outputs."""
    import numpy as np

    ref_path = outputs.get("nvidia-eager")
    if not ref_path or not Path(ref_path).is_file():
        return {}
    ref = np.load(ref_path).astype(np.float64)
    result = {}
    for engine, path in outputs.items():
        if engine == "nvidia-eager" or not Path(path).is_file():
            continue
        got = np.load(path).astype(np.float64)
        if got.shape != ref.shape:
            result[engine] = {"error": f"shape {got.shape} vs {ref.shape}"}
            continue
        diff = np.abs(got - ref)
        mse = float(np.mean(diff ** 2))
        result[engine] = {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                          "psnr_db": float(10 * np.log10(4 / mse)) if mse > 0 else float("inf")}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stylegan2-ada", metavar="PATH", help="stylegan2-ada-pytorch checkout (kind stylegan2)")
    parser.add_argument("--stylegan3", metavar="PATH", help="stylegan3 checkout (kinds stylegan3-t, stylegan3-r)")
    parser.add_argument("--nvidia-python", default=sys.executable,
                        help="python for NVIDIA's code (needs torch, numpy, scipy, pkg_resources: setuptools<81)")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--quick", action="store_true", help="64 px, batch 1, small networks, 2 repeats: a smoke run")
    parser.add_argument("--resolutions", default="64,256")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--kinds", default="stylegan2,stylegan3-t")
    parser.add_argument("--cases", default="", metavar="KIND@RES,...",
                        help="explicit networks instead of --kinds x --resolutions, e.g. stylegan2@64,stylegan3-r@64")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (after one warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--case-seconds", type=float, default=20.0,
                        help="stop timing a case after this many seconds once 2 calls are in")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and ONNX Runtime intra-op threads")
    parser.add_argument("--channel-base", default="", metavar="KIND@RES=N,...",
                        help="override channel_base per network, e.g. stylegan3-t@256=4096 (stylegan3-r: the "
                             "value after train.py's x2, realistic 65536)")
    parser.add_argument("--export-batches", default="1,1,1", metavar="MIN,OPT,MAX",
                        help="the export's batch profile: its checks run every size of it through torch and ONNX "
                             "Runtime (the ONNX batch axis is dynamic either way; the Sampler gets max_batch=8)")
    parser.add_argument("--profile", default="ort-fp32,ort-fp16,ours-torch",
                        help="engines profiled at batch 1 per case ('' for none; nvidia-eager also possible)")
    parser.add_argument("--worker-timeout", type=float, default=900.0)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no further network after this many minutes (the rest is recorded as skipped)")
    parser.add_argument("--render", metavar="JSON", help="only write the .md and .png of an existing results file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary pickles and exports")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print("RESULT " + json.dumps(WORKERS[args.worker](json.loads(args.spec)), default=str), flush=True)
        return

    if args.render:
        report = json.loads(Path(args.render).read_text())
        save(report, Path(args.render).parent, Path(args.render).stem, report.get("log", []), final=True)
        return
    if args.quick:
        args.resolutions = "64" if args.resolutions == "64,256" else args.resolutions
        args.batches = "1" if args.batches == "1,8" else args.batches
        args.repeats = min(args.repeats, 2)
    args.channel_base = {k: int(v) for k, v in (item.split("=") for item in args.channel_base.split(",") if item)}
    resolutions = [int(r) for r in args.resolutions.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    kinds = [k for k in args.kinds.split(",") if k]
    if args.cases:
        pairs = [(c.split("@")[0], int(c.split("@")[1])) for c in args.cases.split(",") if c]
        kinds = list(dict.fromkeys(k for k, _ in pairs))
    else:
        pairs = [(k, r) for k in kinds for r in resolutions]
    engines = [e for e in args.engines.split(",") if e]
    profiled = [e for e in args.profile.split(",") if e]
    export_batches = [int(b) for b in args.export_batches.split(",")]
    checkouts = {"stylegan2_ada": args.stylegan2_ada, "stylegan3": args.stylegan3}
    for kind in kinds:
        if kind not in KINDS:
            parser.error(f"--kinds: {kind} is not one of {', '.join(KINDS)}")
        repo = checkouts[KINDS[kind][0]]
        if not repo or not (Path(repo) / "training").is_dir():
            parser.error(f"{kind} needs --{KINDS[kind][0].replace('_', '-')} PATH (a checkout with training/)")
    for engine in engines + profiled:
        if engine not in ENGINES:
            parser.error(f"{engine} is not one of {', '.join(ENGINES)}")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "stylegan_speed-cpu" + ("-quick" if args.quick else "")
    tmp = Path(tempfile.mkdtemp(prefix="stylegan_speed-"))
    started = time.time()
    log_lines = []

    def log(text):
        stamp = f"[{time.time() - started:6.0f}s]"
        print(f"{stamp} {text}", flush=True)
        log_lines.append(f"{stamp} {text}")

    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "goal": "ort >= 2x nvidia-eager at batch 1",
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info(args),
              "versions": versions(args),
              "nvidia": {name: {"path": str(Path(p).resolve()), "commit": nvidia_commit(Path(p).resolve())}
                         for name, p in checkouts.items() if p},
              "settings": {"threads": args.threads, "torch_threads": args.threads,
                           "onnxruntime_intra_op_threads": args.threads,
                           "onnxruntime_session": "gandeploy's session_options: ORT_ENABLE_ALL, "
                                                  "intra_op.allow_spinning=0",
                           "repeats": args.repeats, "warmup": args.warmup, "case_seconds": args.case_seconds,
                           "export_batches": export_batches, "sampler_max_batch": max(8, *batches),
                           "z": f"numpy default_rng({SEED}).standard_normal((batch, 512)), the same for every engine",
                           "truncation_psi": 1, "noise_mode": "const", "quick": args.quick},
              "load_at_start": loadavg(), "cases": [], "results": []}
    log(f"machine: {report['machine'].get('model_name')}, {report['machine']['cpu_count']} CPUs, load "
        f"{report['load_at_start']}; temp {tmp}")
    try:
        for kind, res in pairs:
            if args.max_minutes is not None and time.time() - started > args.max_minutes * 60:
                log(f"{kind}-{res}: skipped, past --max-minutes {args.max_minutes:g}")
                report.setdefault("skipped", []).append(f"{kind}@{res}")
                continue
            repo = str(Path(checkouts[KINDS[kind][0]]).resolve())
            cb = channel_base_for(kind, res, args)
            name = f"{kind}-{res}"
            case = {"kind": kind, "resolution": res, "channel_base": cb,
                    "realistic_channel_base": REALISTIC_CHANNEL_BASE[kind],
                    "reduced": cb != REALISTIC_CHANNEL_BASE[kind], "nvidia_class": KINDS[kind][1]}
            report["cases"].append(case)
            base = {"kind": kind, "res": res, "threads": args.threads, "repo": repo,
                    "pickle": str(tmp / f"{name}.pkl"), "export": str(tmp / f"{name}-export")}
            log(f"{name}: building NVIDIA's {KINDS[kind][1]} (channel_base {cb}"
                f"{'' if not case['reduced'] else f', reduced from {REALISTIC_CHANNEL_BASE[kind]}'})")
            built = run_worker("build", {**base, "channel_base": cb}, args.nvidia_python, args.worker_timeout, log)
            case["build"] = built
            if "error" in built:
                continue
            log(f"{name}: {built['parameters'] / 1e6:.1f} M parameters, pickle {built['pickle_mb']:.0f} MB; "
                f"exporting")
            exported = run_worker("export", {**base, "export_batches": export_batches}, sys.executable,
                                  args.worker_timeout, log)
            case["export"] = exported
            if "error" in exported:
                continue
            log(f"{name}: exported in {exported['seconds']:.0f} s; "
                f"{exported.get('gflop_per_image', float('nan')):.1f} GFLOP/image "
                f"({exported.get('gflop_split')})")
            for k, batch in enumerate(batches):
                outputs = {}
                rows = []
                # alternate the order, so that a change in the machine's load does not always favour one side
                for engine in (engines if k % 2 == 0 else engines[::-1]):
                    spec = {**base, "engine": engine, "batch": batch, "repeats": args.repeats,
                            "warmup": args.warmup, "budget_s": args.case_seconds,
                            "output": str(tmp / f"{name}-b{batch}-{engine}.npy")}
                    python = args.nvidia_python if engine == "nvidia-eager" else sys.executable
                    r = run_worker("time", spec, python, args.worker_timeout, log)
                    row = {"kind": kind, "resolution": res, "batch": batch, "engine": engine,
                           "channel_base": cb, **r}
                    if "error" not in r:
                        outputs[engine] = spec["output"]
                        row["images_per_s"] = batch / r["median_s"]
                        row["ms_per_batch"] = r["median_s"] * 1000
                        log(f"  {name} b{batch} {engine:12s} {row['ms_per_batch']:9.1f} ms/batch "
                            f"{row['images_per_s']:8.2f} img/s  peak RSS {r['peak_rss_mb']:.0f} MB "
                            f"(run {r['run_peak_rss_mb'] or float('nan'):.0f})  busy cores "
                            f"{r['busy_cores']:.2f}  load {r['load_before'][0] if r['load_before'] else '?'}")
                    rows.append(row)
                rows.sort(key=lambda r: engines.index(r["engine"]))
                nvidia = next((r for r in rows if r["engine"] == "nvidia-eager" and "images_per_s" in r), None)
                diffs = compare(outputs)
                for row in rows:
                    if nvidia and "images_per_s" in row:
                        row["x_nvidia"] = row["images_per_s"] / nvidia["images_per_s"]
                    if row["engine"] in diffs:
                        row["vs_nvidia_output"] = diffs[row["engine"]]
                report["results"].extend(rows)
            profiles = {}
            for engine in profiled:
                spec = {**base, "engine": engine, "batch": 1, "repeats": 2,
                        "output": str(tmp / f"{name}-profile-{engine}")}
                python = args.nvidia_python if engine == "nvidia-eager" else sys.executable
                profiles[engine] = run_worker("profile", spec, python, args.worker_timeout, log)
                top = list(profiles[engine].get("by_category", {}).items())[:4]
                log(f"  {name} profile {engine}: " + ", ".join(f"{k} {v['share'] * 100:.0f}%" for k, v in top
                                                           if v.get("share") is not None))
            case["profile_batch1"] = profiles
            save(report, out_dir, stem, log_lines)  # partial results survive a later failure
    finally:
        report["load_at_end"] = loadavg()
        report["wall_s"] = time.time() - started
        report["log"] = log_lines
        save(report, out_dir, stem, log_lines, final=True)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def goal_lines(report: dict) -> list[str]:
    lines = []
    for r in report["results"]:
        if r["batch"] == 1 and r["engine"].startswith("ort") and "x_nvidia" in r:
            met = r["x_nvidia"] >= 2
            lines.append(f"{r['kind']} {r['resolution']} px, batch 1, {r['engine']}: {r['x_nvidia']:.2f}x NVIDIA's "
                         f"eager -> goal (>= 2x) {'MET' if met else 'NOT met'}")
    return lines


def save(report: dict, out_dir: Path, stem: str, log_lines, final: bool = False) -> None:
    report["goal_check"] = goal_lines(report)
    (out_dir / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if final:
        (out_dir / f"{stem}.md").write_text(markdown(report))
        try:
            plot(report, out_dir / f"{stem}.png")
        except Exception as e:  # the plot is optional
            print(f"no plot: {type(e).__name__}: {e}")
        print(f"-> {out_dir / stem}.json, .md, .png")


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# StyleGAN on the CPU: NVIDIA eager vs gandeploy (torch, ONNX Runtime FP32/FP16)", "",
             f"`{report['command']}`", "",
             f"Machine: {m.get('model_name')} ({m.get('cpu_count')} CPUs, flags "
             f"{', '.join(k for k, v in (m.get('flags') or {}).items() if v)}), {report['settings']['threads']} "
             f"threads for every engine; load average {report.get('load_at_start')} at start, "
             f"{report.get('load_at_end')} at the end (other jobs share the CPU: compare engines within a case). "
             f"Versions: torch {report['versions'].get('torch')}, onnxruntime {report['versions'].get('onnxruntime')}, "
             f"NVIDIA code on torch {report['versions'].get('nvidia_python_torch')}.", ""]
    lines += ["| network | channel_base (realistic) | GFLOP/img | export s |", "|---|---|---|---|"]
    for c in report["cases"]:
        e = c.get("export", {})
        lines.append(f"| {c['kind']} {c['resolution']} px | {c['channel_base']} ({c['realistic_channel_base']})"
                     f"{' reduced' if c['reduced'] else ''} | {e.get('gflop_per_image', float('nan')):.1f} | "
                     f"{e.get('seconds', float('nan')):.0f} |")
    lines += ["", "| kind | res | batch | engine | img/s | ms/batch (median) | x NVIDIA | peak RSS MB (run) | "
                  "busy cores | max abs diff vs NVIDIA |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if "images_per_s" not in r:
            lines.append(f"| {r['kind']} | {r['resolution']} | {r['batch']} | {r['engine']} | error: "
                         f"{r.get('error', '')[:80]} | | | | | |")
            continue
        diff = r.get("vs_nvidia_output", {}).get("max_abs")
        lines.append(f"| {r['kind']} | {r['resolution']} | {r['batch']} | {r['engine']} | {r['images_per_s']:.2f} | "
                     f"{r['ms_per_batch']:.1f} | {r.get('x_nvidia', float('nan')):.2f} | {r['peak_rss_mb']:.0f} "
                     f"({(r.get('run_peak_rss_mb') or float('nan')):.0f}) | {r['busy_cores']:.2f} | "
                     f"{'' if diff is None else f'{diff:.2g}'} |")
    reduced = [f"{c['kind']} {c['resolution']} px ({c['channel_base']} instead of {c['realistic_channel_base']})"
               for c in report["cases"] if c["reduced"]]
    lines += ["", "Notes: images/s = batch / median call time; x NVIDIA = images/s over nvidia-eager's in the same "
                  "case; peak RSS is the worker process's (imports and model included), in brackets its peak while "
                  "running; busy cores = CPU time / wall time of the timed calls (below the thread count when other "
                  "jobs took the CPU)."]
    if reduced:
        lines += ["", "Networks with a reduced channel_base (too slow at NVIDIA's size on this CPU): "
                  + "; ".join(reduced) + "."]
    if report.get("skipped"):
        lines += ["", f"Skipped (past --max-minutes): {', '.join(report['skipped'])}."]
    lines += ["", "Goal: ONNX Runtime >= 2x NVIDIA's eager code at batch 1.", ""]
    lines += [f"- {g}" for g in report.get("goal_check", [])]
    for c in report["cases"]:
        for engine, p in (c.get("profile_batch1") or {}).items():
            cats = p.get("by_category") or {}
            if not cats:
                continue
            total = p.get("kernel_ms") or p.get("self_ms_total")
            lines += ["", f"Profile, {c['kind']} {c['resolution']} px, batch 1, {engine} ({total:.0f} ms in kernels):",
                      ""]
            lines += [f"- {k}: {v['ms']:.1f} ms ({(v.get('share') or 0) * 100:.0f}%)"
                      for k, v in list(cats.items())[:8]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if "x_nvidia" in r]
    batches = sorted({r["batch"] for r in rows})
    if not rows:
        return
    fig, axes = plt.subplots(1, len(batches), figsize=(6 * len(batches), 4), squeeze=False)
    for ax, batch in zip(axes[0], batches):
        cases = sorted({(r["kind"], r["resolution"]) for r in rows if r["batch"] == batch})
        engines = [e for e in ENGINES if any(r["engine"] == e for r in rows)]
        width = 0.8 / len(engines)
        for k, engine in enumerate(engines):
            values = [next((r["x_nvidia"] for r in rows if r["batch"] == batch and r["engine"] == engine
                            and (r["kind"], r["resolution"]) == c), 0) for c in cases]
            ax.bar([i + k * width for i in range(len(cases))], values, width, label=engine)
        if batch == 1:
            ax.axhline(2, color="k", ls="--", lw=0.8, label="goal: ORT 2x")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cases))], [f"{k}\n{r} px" for k, r in cases])
        ax.set_ylabel("images/s relative to NVIDIA eager")
        ax.set_title(f"batch {batch}")
        ax.legend(fontsize=8)
    fig.suptitle(f"StyleGAN CPU speed ({report['settings']['threads']} threads, "
                 f"{report['machine'].get('model_name')})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
