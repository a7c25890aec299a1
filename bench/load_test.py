"""Load test of `gandeploy serve` on loopback: K keep-alive clients for T seconds against the server with its batching
front on and off, side by side, and the Sampler called directly in this process (the ceiling the service can
approach), in interleaved rounds; medians reported.

    python bench/load_test.py --export exports/dcgan_mnist --clients 32 --images 8 --seconds 5 --rounds 3

With --engine starlette,triton it instead compares the two servers on the same export, backend and options: the same
binary Open Inference Protocol requests (byte for byte what tritonclient.http sends) from 1, 8 and 32 clients,
the engines interleaved in each round. Triton runs in --triton-python (a venv with gandeploy[triton-server] made
from a Python with a shared libpython; `make triton-venv` builds .venv-triton).

The clients (one asyncio process, raw HTTP/1.1) and the server share this machine's cores: on a 2-core machine
the client's own CPU time is taken from the server's, so the figures are a floor for a server with its own cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gandeploy import Sampler  # noqa: E402

_LENGTH = re.compile(rb"\r\ncontent-length: *([0-9]+)", re.I)  # not Inference-Header-Content-Length


def start_server(export: str, *options: str) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen([sys.executable, "-m", "gandeploy", "serve", export, "--port", "0", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    for line in proc.stdout:
        found = re.search(r"listening on http://([0-9.]+):([0-9]+)", line)
        if found:
            host, port = found.group(1), int(found.group(2))
            break
    else:
        raise SystemExit(f"the server did not start (exit {proc.wait()})")
    asyncio.run(_wait_ready(host, port))
    return proc, host, port


def start_triton(python: str, export: str, *options: str) -> tuple[subprocess.Popen, str, int]:
    """`gandeploy serve --engine triton` from `python`'s venv; its log goes to a file beside nothing we keep."""
    import socket

    socks = [socket.socket() for _ in range(3)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    proc = subprocess.Popen([python, "-m", "gandeploy", "serve", export, "--engine", "triton", "--port",
                             str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2]), *options],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    asyncio.run(_wait_ready("127.0.0.1", ports[0], 180, b"/v2/health/ready", proc))
    return proc, "127.0.0.1", ports[0]


async def _wait_ready(host: str, port: int, seconds: float = 60, path: bytes = b"/readyz", proc=None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode})")
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:  # not listening yet
            await asyncio.sleep(0.5)
            continue
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
        if head[9:12] == b"200":
            return
        await asyncio.sleep(0.1)
    raise SystemExit("the server did not become ready")


async def _client(host, port, request: bytes, stop_at: float, latencies: list, statuses: Counter) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(int(_LENGTH.search(head).group(1)))
        latencies.append(time.perf_counter() - start)
        statuses[int(head[9:12])] += 1
    writer.close()


def v1_request(images: int) -> bytes:
    body = json.dumps({"n": images, "seed": 0, "format": "npy"}).encode()
    return (b"POST /v1/generate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def v2_request(model: str, latent_dim: int, images: int) -> bytes:
    """An Open Inference Protocol request with binary tensor data, as tritonclient.http sends it."""
    from gandeploy.latents import latents

    z = latents(0, images, latent_dim).tobytes()
    head = json.dumps({"inputs": [{"name": "z", "shape": [images, latent_dim], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(z)}}],
                       "outputs": [{"name": "images", "parameters": {"binary_data": True}}]}).encode()
    return (b"POST /v2/models/%s/infer HTTP/1.1\r\nHost: bench\r\nInference-Header-Content-Length: %d\r\n"
            b"Content-Length: %d\r\n\r\n" % (model.encode(), len(head), len(head) + len(z))) + head + z


async def _load(host, port, clients: int, request: bytes, images: int, seconds: float) -> dict:
    latencies, statuses = [], Counter()
    start = time.perf_counter()
    await asyncio.gather(*(_client(host, port, request, start + seconds, latencies, statuses)
                           for _ in range(clients)))
    elapsed = time.perf_counter() - start
    ok = statuses.get(200, 0)
    lat = np.array(latencies) * 1000
    return {"requests_per_s": ok / elapsed, "images_per_s": ok * images / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "errors": sum(v for k, v in statuses.items() if k != 200), "statuses": dict(statuses)}


def load(host, port, clients, images, seconds, request: bytes | None = None) -> dict:
    request = request or v1_request(images)
    try:
        import uvloop

        return uvloop.run(_load(host, port, clients, request, images, seconds))
    except ImportError:
        return asyncio.run(_load(host, port, clients, request, images, seconds))


def direct(sampler: Sampler, images: int, seconds: float) -> float:
    """Images/s of sampler.sample(images) called back to back in this process, fresh seeds each call."""
    done, seed, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        sampler.sample(images, seed)
        done, seed = done + images, seed + 1
    return done / (time.perf_counter() - start)


def median_of(rounds: list[dict]) -> dict:
    out = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k != "statuses"}
    out["errors"] = sum(r["errors"] for r in rounds)
    return out


def plot(report: dict, path: Path) -> None:
    """Bars of images/s: the Sampler called directly, the service with batching on and off (p99 on each bar)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    r, k = report["results"], report["images_per_request"]
    bars = [(f"Sampler direct\nbatch {k}", report["ceiling_images_per_s"]["at_request_size"], None),
            ("serve\nbatching on", r["batching on"]["images_per_s"], r["batching on"]["p99_ms"]),
            ("serve\nbatching off", r["batching off"]["images_per_s"], r["batching off"]["p99_ms"])]
    if "v2 binary, batching on" in r:
        v2 = r["v2 binary, batching on"]
        bars.append(("v2 infer (binary)\nbatching on", v2["images_per_s"], v2["p99_ms"]))
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=["#888888", "#1f77b4", "#ff7f0e", "#2ca02c"][:len(bars)])
    for i, (_, value, p99) in enumerate(bars):
        ax.annotate(f"{value:,.0f}" + (f"\np99 {p99:.0f} ms" if p99 else ""), (i, value), ha="center", va="bottom",
                    fontsize=8)
    ax.set_ylabel("images/s (median of rounds)")
    ax.set_ylim(0, max(b[1] for b in bars) * 1.25)
    ax.set_title(f"{report['clients']} clients x {k} images (v1: npy, v2: binary), {report['backend']}; "
                 f"workers {report['server_workers']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def engines(a) -> None:
    """Starlette against Triton: the same v2 binary requests, 1/8/32 clients, engines interleaved per round."""
    sampler = Sampler(a.export, backend=a.backend)
    name, dim = sampler.manifest["name"], sampler.config["latent_dim"]
    sampler.close()
    request = v2_request(name, dim, a.images)
    common = ("--backend", a.backend, "--workers", str(a.workers)) + \
        (("--batch-size", str(a.max_batch)) if a.max_batch else ())
    wanted = a.engine.split(",")
    if set(wanted) - {"starlette", "triton"}:
        raise SystemExit(f"--engine {a.engine}: starlette and/or triton (Ray Serve is not installed here)")
    servers = {}
    try:
        for engine in wanted:
            servers[engine] = start_server(a.export, *common) if engine == "starlette" else \
                start_triton(a.triton_python, a.export, *common)
        for engine in wanted:  # first requests load sessions and buffers: not measured
            load(*servers[engine][1:], max(a.client_counts), a.images, 2.0, request)
        runs = {(e, c): [] for e in wanted for c in a.client_counts}
        for r in range(a.rounds):
            for clients in a.client_counts:
                for engine in (wanted if r % 2 == 0 else wanted[::-1]):  # alternate who goes first
                    _, host, port = servers[engine]
                    runs[engine, clients].append(load(host, port, clients, a.images, a.seconds, request))
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{e} x{c} {v[-1]['images_per_s']:,.0f} img/s"
                                                           for (e, c), v in runs.items()), flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(120)
    rows = []
    for (engine, clients), rounds in runs.items():
        rows.append({"engine": engine, "clients": clients, **median_of(rounds),
                     "per_round_images_per_s": [x["images_per_s"] for x in rounds]})
    if len(wanted) == 2:  # paired per round: the first engine's img/s over the second's
        for clients in a.client_counts:
            first, second = runs[wanted[0], clients], runs[wanted[1], clients]
            ratio = statistics.median(x["images_per_s"] / y["images_per_s"] for x, y in zip(first, second))
            next(r for r in rows if r["engine"] == wanted[0] and r["clients"] == clients)[
                f"vs_{wanted[1]}"] = ratio
    report = {
        "command": "python bench/load_test.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, no GPU; "
                   "clients and server share these cores",
        "export": a.export, "backend": a.backend, "images_per_request": a.images, "server_workers": a.workers,
        "server_max_batch": a.max_batch, "seconds_per_window": a.seconds, "rounds": a.rounds,
        "request": "v2 infer, binary tensor data (as tritonclient.http sends it), FP32 z, UINT8 images",
        "rows": rows,
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    plot_engines(report, out.with_suffix(".png"))
    print(f"\n{'engine':10} {'clients':>7} {'img/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in rows:
        ratio = "".join(f"  {r[k]:.2f}x {k[3:]}" for k in r if k.startswith("vs_"))
        print(f"{r['engine']:10} {r['clients']:7d} {r['images_per_s']:9,.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
              f"{r['errors']:7d}{ratio}")
    print(f"(medians of {a.rounds} rounds; {report['machine']}) -> {out}")


def plot_engines(report: dict, path: Path) -> None:
    """Grouped bars of images/s per client count, one bar per engine, p99 on each."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    engines_ = list(dict.fromkeys(r["engine"] for r in report["rows"]))
    counts = list(dict.fromkeys(r["clients"] for r in report["rows"]))
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=120)
    width = 0.8 / len(engines_)
    for i, engine in enumerate(engines_):
        rows = [next(r for r in report["rows"] if r["engine"] == engine and r["clients"] == c) for c in counts]
        xs = [k + (i - (len(engines_) - 1) / 2) * width for k in range(len(counts))]
        ax.bar(xs, [r["images_per_s"] for r in rows], width, label=engine)
        for x, r in zip(xs, rows):
            ax.annotate(f"{r['images_per_s']:,.0f}\np99 {r['p99_ms']:.0f} ms", (x, r["images_per_s"]), ha="center",
                        va="bottom", fontsize=7)
    ax.set_xticks(range(len(counts)), [f"{c} client{'s' if c > 1 else ''}" for c in counts])
    ax.set_ylabel("images/s (median of rounds)")
    ax.set_ylim(0, max(r["images_per_s"] for r in report["rows"]) * 1.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{Path(report['export']).name}: v2 binary, {report['images_per_request']} images per request, "
                 f"{report['backend']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", default="exports/dcgan_mnist")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (at most 256)")
    parser.add_argument("--images", type=int, default=8, help="images per request")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one window (at most 60)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="the servers' --workers (backend calls at once)")
    parser.add_argument("--max-batch", type=int, default=None, help="the servers' --batch-size (default: the export's opt)")
    parser.add_argument("--out", default=None, help="default bench/results/load_test-cpu.json, or "
                                                    "engines-<export>-cpu.json with --engine")
    parser.add_argument("--engine", default=None, help="compare servers instead: starlette,triton")
    parser.add_argument("--client-counts", default="1,8,32", help="with --engine: client counts")
    parser.add_argument("--triton-python", default=str(ROOT / ".venv-triton" / "bin" / "python"),
                        help="with --engine triton: the Python whose venv has gandeploy[triton-server]")
    a = parser.parse_args()
    if not (1 <= a.clients <= 256 and 0 < a.seconds <= 60 and 1 <= a.rounds <= 20):
        raise SystemExit("--clients 1..256, --seconds up to 60, --rounds 1..20: this is a bounded load test")
    if a.engine:
        a.client_counts = [int(c) for c in a.client_counts.split(",")]
        a.out = a.out or f"bench/results/engines-{Path(a.export).name}-cpu.json"
        engines(a)
        return
    a.out = a.out or "bench/results/load_test-cpu.json"

    common = ("--backend", a.backend, "--workers", str(a.workers)) + \
        (("--batch-size", str(a.max_batch)) if a.max_batch else ())
    servers = {"on": start_server(a.export, *common), "off": start_server(a.export, *common, "--no-batching")}
    sampler = Sampler(a.export, backend=a.backend)
    runs = {"batching on": [], "batching off": [], "single image, batching on": [], "single image, batching off": [],
            "v2 binary, batching on": []}
    v2 = v2_request(sampler.manifest["name"], sampler.config["latent_dim"], a.images)
    ceiling, best = [], []
    try:
        for r in range(a.rounds):
            ceiling.append(direct(sampler, a.images, a.seconds))
            best.append(direct(sampler, sampler.max_batch, a.seconds))
            for mode in ("on", "off"):
                _, host, port = servers[mode]
                runs[f"batching {mode}"].append(load(host, port, a.clients, a.images, a.seconds))
                runs[f"single image, batching {mode}"].append(load(host, port, a.clients, 1, a.seconds))
                if mode == "on":  # the Open Inference Protocol endpoint, binary tensors, same server
                    runs["v2 binary, batching on"].append(load(host, port, a.clients, a.images, a.seconds, v2))
            on, off = runs["batching on"][-1]["images_per_s"], runs["batching off"][-1]["images_per_s"]
            print(f"round {r + 1}/{a.rounds}: ceiling {ceiling[-1]:,.0f} img/s, on {on:,.0f}, off {off:,.0f}",
                  flush=True)
    finally:
        for proc, _, _ in servers.values():
            proc.terminate()
            proc.wait(60)
        sampler.close()

    results = {name: median_of(rounds) for name, rounds in runs.items()}
    c = statistics.median(ceiling)
    # paired: each round's service figure over that round's ceiling
    for name in ("batching on", "batching off", "v2 binary, batching on"):
        results[name]["vs_ceiling"] = statistics.median(r["images_per_s"] / x for r, x in zip(runs[name], ceiling))
    report = {
        "command": "python bench/load_test.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores, no GPU; "
                   "clients and server share these cores",
        "export": a.export, "backend": sampler.info["backend"], "clients": a.clients, "images_per_request": a.images,
        "server_workers": a.workers, "server_max_batch": a.max_batch or sampler.manifest["batch"]["opt"],
        "seconds_per_window": a.seconds, "rounds": a.rounds,
        "ceiling_images_per_s": {"at_request_size": c, f"at_max_batch_{sampler.max_batch}": statistics.median(best)},
        "per_round": {"ceiling": ceiling, **{k: [r["images_per_s"] for r in v] for k, v in runs.items()}},
        "results": results,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=2) + "\n")
    plot(report, Path(a.out).with_suffix(".png"))
    print(f"\nSampler direct, batch {a.images}: {c:,.0f} img/s; batch {sampler.max_batch}: "
          f"{statistics.median(best):,.0f} img/s")
    print(f"{'':28} {'req/s':>9} {'img/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'x ceiling':>9}")
    for name, f in results.items():
        ratio = f"{f['vs_ceiling']:.2f}" if "vs_ceiling" in f else ""
        print(f"{name:28} {f['requests_per_s']:9,.0f} {f['images_per_s']:9,.0f} {f['p50_ms']:8.2f} "
              f"{f['p99_ms']:8.2f} {f['errors']:7d} {ratio:>9}")
    print(f"(medians of {a.rounds} rounds, {a.clients} clients; {report['machine']}) -> {a.out}")


if __name__ == "__main__":
    main()
