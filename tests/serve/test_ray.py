"""`gandeploy serve --ray`: two Ray Serve replicas on a local Ray instance (loopback only), answers byte-identical
to the Sampler's, and a replica killed mid-load replaced by Ray while the clients go on. Needs the `ray` extra:
`make test-all` installs it; elsewhere this file skips with that reason."""

import socket
import statistics
import threading
import time
import urllib.request

import numpy as np
import pytest

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray", reason="Ray Serve is not installed: `make test-all` (pip install 'gandeploy[ray]')")
from ray import serve  # noqa: E402

from gandeploy import Sampler  # noqa: E402
from gandeploy.serve import ServeOptions  # noqa: E402
from gandeploy.serve.ray import application  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""
    except OSError:
        return 0, b""


def replicas() -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a["name"].startswith("SERVE_REPLICA::gandeploy"))


def test_two_replicas_survive_a_killed_one(exports):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(application(exports["uint8"], ServeOptions(), replicas=2), name="gandeploy", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while get(f"{base}/readyz")[0] != 200:
            assert time.monotonic() < deadline, "no replica became ready"
            time.sleep(0.2)
        seeds = list(range(12))
        with Sampler(exports["uint8"], backend="onnxruntime") as sampler:
            expected = {s: sampler.sample(4, seed=s) for s in seeds}
        stats = {"requests": 0, "retried": 0, "failed": 0, "wrong": 0, "latencies": []}
        stop = time.monotonic() + 20
        lock = threading.Lock()

        def client(k):
            s = k
            while time.monotonic() < stop:
                seed = seeds[s % len(seeds)]
                for attempt in range(5):  # a request lost with the killed replica is retried
                    start = time.perf_counter()
                    status, body = get(f"{base}/v1/generate?n=4&seed={seed}&format=npy")
                    with lock:
                        stats["requests"] += 1
                        if status == 200:
                            stats["latencies"].append(time.perf_counter() - start)
                            images = np.load(__import__("io").BytesIO(body))
                            stats["wrong"] += int(not np.array_equal(images, expected[seed]))
                            break
                        stats["retried"] += 1
                    time.sleep(0.2)
                else:
                    with lock:
                        stats["failed"] += 1
                s += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        time.sleep(5)
        before = replicas()
        assert len(before) == 2
        ray.kill(ray.get_actor(before[0], namespace="serve"), no_restart=True)  # a replica dies mid-load
        for t in threads:
            t.join()
        deadline = time.monotonic() + 60
        while not (len(replicas()) == 2 and before[0] not in replicas()):
            assert time.monotonic() < deadline, f"the killed replica was not replaced: {replicas()}"
            time.sleep(0.5)
        ms = np.array(stats["latencies"]) * 1000
        print(f"\nray: {stats['requests']} requests, {len(ms)} answered, {stats['retried']} retried, "
              f"{stats['failed']} failed after 5 tries, {stats['wrong']} wrong; p50 {statistics.median(ms):.1f} ms, "
              f"p99 {np.percentile(ms, 99):.1f} ms; replaced {before[0]} by {set(replicas()) - set(before)}")
        assert stats["wrong"] == 0 and stats["failed"] == 0 and len(ms) > 20
    finally:
        serve.shutdown()
        ray.shutdown()


def test_generate_on_ray_writes_the_local_bytes(exports, tmp_path):
    from conftest import cli

    args = ["generate", str(exports["cond"]), "--n", "300", "--shard-size", "64", "--format", "tar", "--no-progress"]
    assert cli(*args, "--out", str(tmp_path / "local"))[0] == 0
    try:
        code, output = cli(*args, "--out", str(tmp_path / "ray"), "--ray", "2")
    finally:
        ray.shutdown()
    assert code == 0, output
    local = {p.name: p.read_bytes() for p in (tmp_path / "local").glob("shard-*")}
    assert len(local) == 5 and local == {p.name: p.read_bytes() for p in (tmp_path / "ray").glob("shard-*")}
