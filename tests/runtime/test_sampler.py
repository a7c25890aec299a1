"""The shared test every available backend passes: determinism, parity with PyTorch FP32, labels, bad input,
concurrency. Backends that cannot run here skip with their reason."""

import asyncio
import threading

import numpy as np
import pytest
import torch

from gandeploy import Overloaded, Sampler, SamplerError
from gandeploy.artifacts import load_generator
from gandeploy.formats.images import to_uint8
from gandeploy.latents import latents
from gandeploy.runtime import BackendUnavailable
from gandeploy.runtime.device import cuda_device_count

BACKENDS = ["torch", "onnxruntime", "tensorrt"]


def open_sampler(path, backend, **kwargs) -> Sampler:
    try:
        return Sampler(path, backend=backend, **kwargs)
    except BackendUnavailable as e:
        pytest.skip(f"{backend} cannot run here: {e}")


def reference(run_dir, z, labels=None) -> np.ndarray:
    generator, _ = load_generator(run_dir)
    with torch.inference_mode():
        return generator(torch.from_numpy(z), None if labels is None else torch.from_numpy(labels)).numpy()


@pytest.mark.parametrize("backend", BACKENDS)
def test_image_k_of_seed_s_depends_on_s_and_k_alone(exports, backend):
    with open_sampler(exports["uint8"], backend) as sampler:
        ten = sampler.sample(10, seed=7)
        assert ten.dtype == np.uint8 and ten.shape == (10, 28, 28, 1)
        np.testing.assert_array_equal(ten, sampler.sample(25, seed=7)[:10])
        assert not np.array_equal(ten, sampler.sample(10, seed=8))
        np.testing.assert_array_equal(sampler.latents(10, 7), latents(7, 10, 16))
    with open_sampler(exports["uint8"], backend, max_batch=3) as chunked:  # chunking changes nothing
        np.testing.assert_array_equal(chunked.sample(10, seed=7), ten)


@pytest.mark.parametrize("backend", BACKENDS)
def test_parity_with_pytorch_fp32(exports, tiny_run, backend):
    z = latents(3, 20, 16)
    expected = reference(tiny_run, z)
    with open_sampler(exports["float"], backend) as sampler:
        got = sampler.generate(z)
        assert got.dtype == np.float32 and got.shape == (20, 1, 28, 28)
        assert np.abs(got - expected).max() <= 1e-4
    with open_sampler(exports["uint8"], backend) as sampler:
        images = sampler.sample(20, seed=3)
        assert np.abs(images.astype(int) - to_uint8(expected).astype(int)).max() <= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_conditional_labels(exports, tiny_conditional_run, backend):
    with open_sampler(exports["cond"], backend) as sampler:
        labels = np.arange(12) % 10
        images = sampler.sample(12, seed=1, labels=labels)
        expected = to_uint8(reference(tiny_conditional_run, latents(1, 12, 16), labels.astype(np.int64)))
        assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1
        threes = sampler.sample(12, seed=1, labels=3)  # one label for all
        np.testing.assert_array_equal(threes[3], images[3])
        assert not np.array_equal(threes[4], images[4])
        # no labels: image k gets k % classes, the one default of sample, generate, serve and the Sampler
        np.testing.assert_array_equal(sampler.sample(12, seed=1), sampler.sample(12, seed=1, labels=labels))
        with pytest.raises(SamplerError, match="label 10 is out of range; this generator has classes 0..9"):
            sampler.sample(2, seed=0, labels=[1, 10])
        with pytest.raises(SamplerError, match=r"labels has shape \(3,\); expected one int or \(2,\)"):
            sampler.sample(2, seed=0, labels=[1, 2, 3])
        with pytest.raises(SamplerError, match="labels must be integers"):
            sampler.sample(2, seed=0, labels=[0.5, 1.5])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_is_a_clear_value_error(exports, backend):
    with open_sampler(exports["uint8"], backend, max_images=100) as sampler:
        cases = [
            (lambda: sampler.sample(0, 1), "n=0 is out of range; ask for 1 to 100 images"),
            (lambda: sampler.sample(101, 1), "n=101 is out of range"),
            (lambda: sampler.sample(2.5, 1), "n must be an integer"),
            (lambda: sampler.sample(2, -1), "seed must be an integer in"),
            (lambda: sampler.sample(2, 1.5), "seed must be an integer in"),
            (lambda: sampler.sample(2, 1, labels=[1, 2]), "unconditional; pass no labels"),
        ]
        if backend != "torch":  # the graph of a uint8 export has no float output; PyTorch has both
            cases.append((lambda: sampler.generate(np.zeros((2, 16), np.float32)), "exported with uint8 output"))
        for call, message in cases:
            with pytest.raises(ValueError, match=message):
                call()
    with open_sampler(exports["float"], backend) as sampler:
        with pytest.raises(SamplerError, match=r"z has shape \(2, 15\); expected \(n, 16\)"):
            sampler.generate(np.zeros((2, 15), np.float32))
        with pytest.raises(SamplerError, match="z has dtype float64; expected float32"):
            sampler.generate(np.zeros((2, 16)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sixteen_threads_get_the_serial_results(exports, backend):
    with open_sampler(exports["uint8"], backend) as sampler:
        sampler.batching(max_delay_ms=5, workers=2)  # two batches at once
        jobs = [(1 + k % 5, 100 + k) for k in range(48)]
        serial = {job: sampler.sample(*job) for job in jobs}
        results, errors = {}, []
        start = threading.Barrier(16)

        def worker(index):
            try:
                start.wait()
                for job in jobs[index::16]:
                    results[("direct", job)] = sampler.sample(*job)
                    results[("front", job)] = sampler.submit(*job).result(timeout=60)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for (_, job), images in results.items():
            np.testing.assert_array_equal(images, serial[job])


def test_batching_front_coalesces_and_refuses_when_full(exports):
    with Sampler(exports["uint8"], backend="onnxruntime").batching(max_delay_ms=500, max_queue=3) as sampler:
        first = sampler.submit(2, seed=1)
        with pytest.raises(Overloaded, match="batching queue full"):
            sampler.submit(2, seed=2)  # 4 images would wait, over the limit of 3: refused at once
        np.testing.assert_array_equal(first.result(timeout=10), sampler.sample(2, seed=1))
        later = sampler.submit(2, seed=2).result(timeout=10)  # the service goes on
        np.testing.assert_array_equal(later, sampler.sample(2, seed=2))


def test_asyncio_form(exports):
    async def many(sampler):
        return await asyncio.gather(*(sampler.asample(2, seed=s) for s in range(8)))

    with Sampler(exports["uint8"], backend="onnxruntime") as sampler:
        for seed, images in enumerate(asyncio.run(many(sampler))):
            np.testing.assert_array_equal(images, sampler.sample(2, seed=seed))


def test_interpolation_runs_from_seed_a_to_seed_b(exports):
    with Sampler(exports["uint8"], backend="torch") as sampler:
        path = sampler.interpolate(4, 9, steps=6)
        assert path.shape == (6, 28, 28, 1)
        assert np.abs(path[0].astype(int) - sampler.sample(1, 4)[0]).max() <= 1
        assert np.abs(path[-1].astype(int) - sampler.sample(1, 9)[0]).max() <= 1


def first_that_loads(export) -> str:
    """The first of auto's candidates that loads here, found by trying each one named (not by asking auto)."""
    from gandeploy.runtime.backends import AUTO

    for name, kind in AUTO:
        if kind == "cuda" and not cuda_device_count():
            continue
        try:
            Sampler(export, backend=name, device=kind).close()
            return name
        except BackendUnavailable:
            continue
    raise AssertionError("no backend loads")


def test_auto_picks_what_runs_here_and_says_why(exports, tiny_run, tmp_path):
    with Sampler(exports["uint8"]) as sampler:
        assert sampler.info["backend"] == first_that_loads(exports["uint8"])
        if not cuda_device_count():
            assert sampler.info["backend"] == "onnxruntime" and sampler.info["device"] == "cpu"
            assert "tensorrt on cuda" in sampler.info["why"]
    with Sampler(tiny_run) as from_run:  # a run folder: only torch can run it
        assert from_run.info["backend"] == "torch"
    with pytest.raises(ValueError, match="does not exist"):
        Sampler(tmp_path / "nothing")
    with pytest.raises(ValueError, match="neither an export .* nor a generator folder"):
        Sampler(tmp_path)
    with pytest.raises(ValueError, match="no fp32 TensorRT engine"):
        Sampler(exports["uint8"], backend="tensorrt")
    with pytest.raises(ValueError, match="backend 'tflite' is not one of"):
        Sampler(exports["uint8"], backend="tflite")
    with pytest.raises(ValueError, match="unknown option 'max_queue'; backend options are"):
        Sampler(exports["uint8"], max_queue=3)  # batching settings belong to batching()
    with pytest.raises(ValueError, match="device 'gpu': expected auto, cpu or cuda"):
        Sampler(exports["uint8"], device="gpu")


def test_closed_sampler_and_racing_first_submits(exports):
    sampler = Sampler(exports["uint8"], backend="onnxruntime")
    barrier, futures = threading.Barrier(8), []

    def first_submit():
        barrier.wait()
        futures.append(sampler.submit(1, seed=3))

    threads = [threading.Thread(target=first_submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = sampler.sample(1, seed=3)
    for future in futures:
        np.testing.assert_array_equal(future.result(timeout=30), expected)
    front_threads = [t for t in threading.enumerate() if t.name.startswith("gandeploy-batcher")]
    assert len(front_threads) == 1  # one front however many threads raced to make it
    sampler.close()
    sampler.close()  # twice is fine
    assert not any(t.name.startswith("gandeploy-batcher") for t in threading.enumerate())
    for call in (lambda: sampler.sample(1, 0), lambda: sampler.submit(1, 0)):
        with pytest.raises(SamplerError, match="is closed; make a new one"):
            call()


def test_an_engine_of_the_other_precision_is_named(exports, tmp_path):
    """An export whose only engine is FP16 (what `export --trt` builds): asking for fp32 says how to get either.
    The engine file is stand-in bytes, never loaded: the loader refuses before it reads it."""
    import json
    import shutil

    from gandeploy.formats.files import sha256
    from gandeploy.runtime.verify import verify

    folder = tmp_path / "with-engine"
    shutil.copytree(exports["uint8"], folder)
    plan = folder / "generator.nvidia-l4.sm89.trt10.13.0.fp16.plan"
    plan.write_bytes(b"stand-in bytes, not an engine")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["engines"] = [{"file": plan.name, "precision": "fp16", "compute_capability": "8.9",
                            "tensorrt_version": "10.13.0", "size": plan.stat().st_size, "sha256": sha256(plan)}]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BackendUnavailable, match=r"has no fp32 TensorRT engine \(it has fp16: pass "
                                                 r"precision='fp16'.*--trt --no-fp16"):
        Sampler(folder, backend="tensorrt")
    if not cuda_device_count():  # the engine is listed, not silently left out
        lines = [c.line() for c in verify(folder) if c.backend == "tensorrt"]
        assert lines == ["SKIPPED  tensorrt fp16 on cuda: tensorrt needs a CUDA GPU and the driver shows none here; "
                         "run verify on the machine that will serve"]
