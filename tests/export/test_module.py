"""Bring your own generator: export, verify and sample PyTorch generators gandeploy did not train."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import user_generators as ug
from conftest import cli
from gandeploy import Sampler
from gandeploy.errors import UserError
from gandeploy.export import ExportOptions, export_module
from gandeploy.formats.images import to_uint8
from gandeploy.latents import latents
from gandeploy.runtime.verify import verify

HERE = Path(__file__).resolve().parent
SMALL = ["--max-batch", "16", "--opt-batch", "8"]
QUIET = dict(log=lambda _: None)


def small():
    return ExportOptions(max_batch=16, opt_batch=8)


def module_images(module, z, labels=None, value_range=(-1.0, 1.0), latent_shape=None) -> np.ndarray:
    with torch.inference_mode():
        zt = torch.from_numpy(z).reshape(len(z), *(latent_shape or z.shape[1:]))
        x = module(zt) if labels is None else module(zt, torch.from_numpy(labels))
    return to_uint8(x.numpy(), value_range)


def within_one_level(a, b):
    return np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A working folder holding the user's own module file, as `gandeploy export --module mynets:...` expects."""
    shutil.copy(HERE / "user_generators.py", tmp_path / "mynets.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts the working folder first; undo it after
    monkeypatch.delitem(sys.modules, "mynets", raising=False)
    return tmp_path


@pytest.mark.parametrize("data_parallel", [False, True])
def test_dcgan_tutorial_by_its_weights_alone(user_folder, data_parallel):
    module = ug.randomize(ug.TutorialGenerator(1, nz=16, ngf=8, nc=3))
    state = module.state_dict()
    if data_parallel:  # what torch.save(nn.DataParallel(netG).state_dict()) gives
        state = {f"module.{k}": v for k, v in state.items()}
    torch.save(state, user_folder / "netG.pth")
    code, output = cli("export", "--arch", "dcgan-tutorial", "--weights", "netG.pth", *SMALL)
    assert code == 0, output
    folder = user_folder / "exports" / "netG"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["generator"]["family"] == "dcgan" and manifest["generator"]["latent_dim"] == 16
    assert manifest["source"]["arch"] == "dcgan-tutorial" and len(manifest["source"]["weights_sha256"]) == 64
    z = latents(3, 12, 16)
    expected = module_images(module, z, latent_shape=(16, 1, 1))
    for backend in ("onnxruntime", "torch"):  # mapped onto our DCGAN family: the torch backend runs it too
        with Sampler(folder, backend=backend) as sampler:
            assert sampler.sample(12, seed=3).shape == (12, 64, 64, 3)
            assert within_one_level(sampler.sample(12, seed=3), expected)
    assert all(c.parity.passed for c in verify(folder) if c.parity is not None)
    code, output = cli("sample", str(folder), "--n", "4", "--out", "g.png")
    assert code == 0 and (user_folder / "g.png").is_file()


def test_your_module_through_the_cli(user_folder):
    module = ug.randomize(ug.small_tutorial(), seed=2)
    save_file(module.state_dict(), str(user_folder / "g.safetensors"))
    code, output = cli("export", "--module", "mynets:small_tutorial", "--weights", "g.safetensors",
                       "--latent-dim", "16", "--latent-shape", "16,1,1", "--out", "exports/mine", *SMALL)
    assert code == 0, output
    folder = user_folder / "exports" / "mine"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"]["module"] == "mynets:small_tutorial" and manifest["generator"]["family"] == "module"
    with Sampler(folder, backend="onnxruntime") as sampler:
        assert within_one_level(sampler.sample(10, seed=1), module_images(module, latents(1, 10, 16),
                                                                          latent_shape=(16, 1, 1)))
    with pytest.raises(ValueError, match="carries no PyTorch generator .*mynets:small_tutorial"):
        Sampler(folder, backend="torch")
    code, output = cli("verify", str(folder))
    assert code == 0 and "PASSED   onnxruntime fp32" in output and "torch" not in output
    # the same weights under the wrong shape, a missing module, a class that needs arguments
    code, output = cli("export", "--module", "mynets:small_tutorial", "--weights", "g.safetensors",
                       "--latent-dim", "16", "--out", "exports/x")
    assert code == 2 and "the module failed on latents of shape (2, 16)" in output
    code, output = cli("export", "--module", "nothere:G", "--weights", "g.safetensors", "--latent-dim", "16")
    assert code == 2 and "cannot import nothere" in output
    code, output = cli("export", "--module", "mynets:Overflowing", "--weights", "g.safetensors", "--latent-dim", "8")
    assert code == 2 and "the weights do not fit: 'fc.weight' is missing" in output


@pytest.mark.parametrize("case", ["conditional", "one_hot_sigmoid", "mlp_0_1", "large_128"])
def test_your_module_through_the_python_api(case, tmp_path):
    if case == "conditional":
        module, dim, shape, value_range, classes = ug.randomize(ug.ConditionalGenerator()), 8, None, (-1, 1), 5
    elif case == "one_hot_sigmoid":  # an int64 -> float Cast (FP16 used to be an invalid graph), no Tanh at the end
        module, dim, shape, value_range, classes = ug.randomize(ug.OneHotGenerator()), 8, None, (0.0, 1.0), 5
    elif case == "mlp_0_1":
        module, dim, shape, value_range, classes = ug.randomize(ug.MLPGenerator()), 10, None, (0.0, 1.0), 0
    else:
        module, dim, shape, value_range, classes = ug.randomize(ug.Large()), 8, (8, 1, 1), (-1, 1), 0
    folder = export_module(module, tmp_path / case, latent_dim=dim, latent_shape=shape, value_range=value_range,
                           num_classes=classes, options=small(), **QUIET)
    z = latents(5, 9, dim)
    labels = np.arange(9, dtype=np.int64) % classes if classes else None
    with Sampler(folder, backend="onnxruntime") as sampler:
        got = sampler.sample(9, seed=5, labels=labels)
    assert within_one_level(got, module_images(module, z, labels, value_range, shape))
    assert all(c.parity.passed for c in verify(folder) if c.parity is not None)
    mix = json.loads((folder / "manifest.json").read_text())["parity"]["onnxruntime_fp16"]["mixed_precision"]
    assert mix["float32_post_processing"] >= 4  # the uint8 conversion, found from the graph's end, not from a Tanh
    assert mix["float32_casts"] == (1 if case == "one_hot_sigmoid" else 0)


def test_fp16_keeps_the_overflowing_nodes_in_float32(tmp_path):
    lines = []
    folder = export_module(ug.Overflowing(), tmp_path / "o", latent_dim=8, options=small(), log=lines.append)
    fp16 = json.loads((folder / "manifest.json").read_text())["parity"]["onnxruntime_fp16"]
    kept = fp16["kept_fp32"]
    assert kept and all(k["max_abs"] > 65504 and k["why"] == "overflows float16" for k in kept)
    assert {k["op"] for k in kept} >= {"Mul", "Relu"}
    arithmetic = fp16["float16_arithmetic"]  # ONNX Runtime's CPU provider computes float16 graphs in float32
    assert arithmetic["kept_fp32"]["passed"] and not arithmetic["plain_conversion"]["passed"]
    assert arithmetic["kept_fp32"]["non_finite"] == 0 and arithmetic["plain_conversion"]["non_finite"] > 0
    assert fp16["passed"]
    note = next(line for line in lines if line.startswith("FP16: kept"))
    assert "plain conversion max |err|" in note and note.endswith("FAILED") and "PASSED; plain" in note
    with Sampler(folder, backend="onnxruntime", precision="fp16") as half, \
            Sampler(folder, backend="onnxruntime") as full:
        assert np.abs(half.sample(8, 0).astype(int) - full.sample(8, 0).astype(int)).max() <= 2


def test_a_pickled_module_is_refused_and_never_run(user_folder):
    marker = user_folder / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"main.0.weight": Payload()}, user_folder / "evil.pth")
    torch.save(ug.small_tutorial(), user_folder / "whole.pth")  # torch.save(netG): the whole module, pickled
    for file in ("evil.pth", "whole.pth"):
        code, output = cli("export", "--arch", "dcgan-tutorial", "--weights", file)
        assert code == 2 and "holds pickled Python objects" in output and "state_dict()" in output, output
    assert not marker.exists()
    torch.save({"main.0.weight": torch.zeros(16, 64, 4, 4)}, user_folder / "partial.pth")
    code, output = cli("export", "--arch", "dcgan-tutorial", "--weights", "partial.pth")
    assert code == 2 and "'main.12.weight' is missing" in output
    wrong = ug.small_tutorial().state_dict()
    wrong["main.3.weight"] = torch.zeros(64, 16, 4, 4)
    torch.save(wrong, user_folder / "wrong.pth")
    code, output = cli("export", "--arch", "dcgan-tutorial", "--weights", "wrong.pth")
    assert code == 2 and "'main.3.weight' has shape (64, 16, 4, 4), the module wants (64, 32, 4, 4)" in output


@pytest.mark.parametrize("module, message", [
    (ug.Noisy(), "draws random numbers inside forward"),
    (ug.Branchy(), "could not export this generator"),
])
def test_what_cannot_be_exported_says_why(module, message, tmp_path):
    with pytest.raises(UserError, match=message) as caught:
        export_module(module, tmp_path / "x", latent_dim=8, options=small(), **QUIET)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name, args, shape, value_range, classes", [
    ("ConditionalGenerator", ["--latent-dim", "8", "--classes", "5"], None, (-1.0, 1.0), 5),
    ("MLPGenerator", ["--latent-dim", "10", "--value-range", "0,1"], None, (0.0, 1.0), 0),
    ("Large", ["--latent-dim", "8", "--latent-shape", "8,1,1", "--value-range", "-1,1"], (8, 1, 1), (-1.0, 1.0), 0),
])
def test_the_same_generators_through_the_cli(user_folder, name, args, shape, value_range, classes):
    module = ug.randomize(getattr(ug, name)(), seed=4)
    torch.save(module.state_dict(), user_folder / "w.pt")
    code, output = cli("export", "--module", f"mynets:{name}", "--weights", "w.pt", *args, "--out", "exports/m",
                       *SMALL)
    assert code == 0, output
    dim = int(args[1])
    labels = np.arange(6, dtype=np.int64) % classes if classes else None
    with Sampler(user_folder / "exports" / "m", backend="onnxruntime") as sampler:
        got = sampler.sample(6, seed=2, labels=labels)
    assert within_one_level(got, module_images(module, latents(2, 6, dim), labels, value_range, shape))
    code, output = cli("verify", "exports/m")
    assert code == 0, output


@pytest.mark.parametrize("source, spec, message", [
    ("import einops_not_here\n", "broken:G", "importing broken needs einops_not_here, which is not installed"),
    ("assert False, 'needs a CUDA device'\n", "broken:G", "importing broken failed: AssertionError: needs a CUDA"),
    ("import sys\nsys.exit(0)\n", "broken:G", "importing broken failed: it called sys.exit(0)"),
    ("def G(:\n", "broken:G", "importing broken failed: SyntaxError"),
    ("raise RuntimeError('boom')\n", "broken:G", "importing broken failed: RuntimeError: boom"),
    ("def G():\n    raise ValueError('no weights here')\n", "broken:G", "calling G() failed: ValueError: no weights"),
    ("", "builtins:exit", "calling exit() failed: it called sys.exit(None)"),
])
def test_the_users_module_failing_or_exiting_is_one_line(user_folder, source, spec, message):
    """Importing and calling the user's code is contained: an exit, an assertion, a missing dependency or a
    SyntaxError is one line naming the module and the cause, exit 2, and nothing is written."""
    (user_folder / "broken.py").write_text(source)
    save_file({"w": torch.zeros(1)}, str(user_folder / "g.safetensors"))
    sys.modules.pop("broken", None)
    code, output = cli("export", "--module", spec, "--weights", "g.safetensors", "--latent-dim", "8")
    assert code == 2 and message in output and len(output.strip().splitlines()) == 1, output
    assert not (user_folder / "exports").exists()


def test_more_classes_than_the_module_has_is_one_line(tmp_path):
    module = ug.randomize(ug.ConditionalGenerator(classes=5))
    with pytest.raises(UserError, match=r"--classes 7: the module failed on labels 0\.\.6 \(IndexError") as e:
        export_module(module, tmp_path / "c", latent_dim=8, num_classes=7, options=small(), **QUIET)
    assert "\n" not in str(e.value) and not (tmp_path / "c").exists()


def test_the_declared_value_range_is_checked_against_the_images(tmp_path):
    module = ug.randomize(ug.MLPGenerator())  # a sigmoid: images in 0..1
    with pytest.raises(UserError, match=r"--value-range 0,255: .* span only .*, under 1% of that range; pass the "
                                        r"range its images are in, e.g. --value-range 0,1") as e:
        export_module(module, tmp_path / "a", latent_dim=10, value_range=(0, 255), options=small(), **QUIET)
    assert "\n" not in str(e.value) and not (tmp_path / "a").exists()
    with pytest.raises(UserError, match=r"--value-range -1,0: 100.0% of the module's output values on 16 random "
                                        r"latents fall outside -1\.\.0 \(measured .*\); pass the range its images are "
                                        r"in, e.g. --value-range 0,1"):  # a sigmoid's values are all above 0
        export_module(module, tmp_path / "b", latent_dim=10, value_range=(-1, 0), options=small(), **QUIET)


@pytest.mark.parametrize("name", ["ModulatedGenerator", "ModulatedUpGenerator", "InnerTanh"])
def test_modulated_convolutions_grouped_by_the_batch_and_an_inner_tanh(name, tmp_path):
    """groups=batch (lucidrains' Conv2DMod, NVIDIA's fused transposed modconv) is rewritten so the batch stays
    dynamic; an inner Tanh leaves the network's layers in float16 and only the uint8 tail in float32."""
    module = ug.randomize(getattr(ug, name)(), seed=3)
    folder = export_module(module, tmp_path / name, latent_dim=8, options=small(), **QUIET)
    with Sampler(folder, backend="onnxruntime") as sampler:
        for n in (1, 3, 8):
            assert within_one_level(sampler.sample(n, seed=n), module_images(module, latents(n, n, 8)))
    assert all(c.parity.passed for c in verify(folder) if c.parity is not None)
    mix = json.loads((folder / "manifest.json").read_text())["parity"]["onnxruntime_fp16"]["mixed_precision"]
    assert mix["float32_nodes"] == mix["float32_post_processing"] >= 4
    weights = sum(p.numel() for p in module.parameters())
    assert mix["weights_float16"] >= weights and mix["weights_float32"] < 16


def test_a_convolution_grouped_by_the_batch_that_is_not_rewritten_is_one_line(user_folder):
    torch.save(ug.WithModulated1d().state_dict(), user_folder / "w.pt")
    code, output = cli("export", "--module", "mynets:WithModulated1d", "--weights", "w.pt", "--latent-dim", "8")
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert ("the generator's block (Modulated1d) runs aten::conv1d with a group count that depends on the batch "
            "size" in output and "apply the per-sample weights to the activations instead" in output)
    assert list((user_folder / "exports").iterdir()) == [], list((user_folder / "exports").iterdir())


def test_a_truncated_normal_generator_end_to_end(user_folder):
    """--latent-dist truncated_normal (BigGAN's truncnorm(-t, t) times a truncation): recorded in the manifest and
    drawn by the Sampler, verify and generate; the images are the module's on those latents."""
    module = ug.randomize(ug.ConditionalGenerator(), seed=6)
    torch.save(module.state_dict(), user_folder / "w.pt")
    code, output = cli("export", "--module", "mynets:ConditionalGenerator", "--weights", "w.pt", "--latent-dim", "8",
                       "--classes", "5", "--latent-dist", "truncated_normal", "--latent-bound", "1.5",
                       "--latent-scale", "0.5", "--out", "exports/t", *SMALL)
    assert code == 0, output
    folder = user_folder / "exports" / "t"
    manifest = json.loads((folder / "manifest.json").read_text())
    dist = {"name": "truncated_normal", "bound": 1.5, "scale": 0.5}
    assert manifest["generator"]["latent_distribution"] == dist
    with Sampler(folder, backend="onnxruntime") as sampler:
        z = sampler.latents(7, seed=4)
        np.testing.assert_array_equal(z, latents(4, 7, 8, dist=dist))
        assert np.abs(z).max() <= 0.75
        labels = np.arange(7) % 5
        images = sampler.sample(7, seed=4)
    assert within_one_level(images, module_images(module, z, labels))
    code, output = cli("verify", "exports/t")
    assert code == 0 and "PASSED" in output, output
    code, output = cli("generate", "exports/t", "--n", "7", "--seed", "4", "--out", "shards", "--no-progress")
    assert code == 0, output
    record = json.loads((user_folder / "shards" / "shards.json").read_text())
    got = np.concatenate([np.load(user_folder / "shards" / s["file"])["images"] for s in record["shards"]])
    np.testing.assert_array_equal(got, images)
    code, output = cli("export", "--module", "mynets:ConditionalGenerator", "--weights", "w.pt", "--latent-dim", "8",
                       "--latent-dist", "normal", "--latent-bound", "2")
    assert code == 2 and "a normal latent distribution has no bound" in output, output
    manifest["generator"]["latent_distribution"] = {"name": "gauss"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, output = cli("verify", "exports/t")
    assert code != 0 and "generator: latent_distribution: latent distribution 'gauss' is not one of" in output


@pytest.mark.parametrize("forward, message", [
    ("raise SystemExit(0)", "the module failed on latents of shape (2, 8): it called sys.exit(0)"),
    ("raise KeyError('w')", "the module failed on latents of shape (2, 8): KeyError: 'w'"),
    ("return z.view(-1, 2, 2, 2)[:, :1] if len(z) == 2 else sys.exit(3)",
     "the module failed on 16 random latents: it called sys.exit(3)"),
])
def test_a_forward_that_exits_or_raises_is_one_line(user_folder, forward, message):
    (user_folder / "bad.py").write_text(
        "import sys\nimport torch\n\n\nclass G(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.w = torch.nn.Parameter(torch.zeros(1))\n\n    def forward(self, z):\n"
        f"        {forward}\n")
    save_file({"w": torch.zeros(1)}, str(user_folder / "g.safetensors"))
    sys.modules.pop("bad", None)
    code, output = cli("export", "--module", "bad:G", "--weights", "g.safetensors", "--latent-dim", "8")
    assert code == 2 and message in output and len(output.strip().splitlines()) == 1, output


def test_sizes_are_bounded_and_casts_are_named(user_folder):
    torch.save(ug.MLPGenerator().state_dict(), user_folder / "w.pt")
    code, output = cli("export", "--module", "mynets:MLPGenerator", "--weights", "w.pt", "--latent-dim",
                       "1000000000000")
    assert code == 2 and "latent_dim (--latent-dim) must be an integer from 1 to 1048576" in output, output
    code, output = cli("export", "--module", "mynets:ConditionalGenerator", "--weights", "w.pt", "--latent-dim",
                       "8", "--classes", "100000000")
    assert code == 2 and "num_classes (--classes) must be an integer from 0 to 65536" in output, output
    state = {k: v.to(torch.float64) if k == "net.0.weight" else v for k, v in
             ug.randomize(ug.MLPGenerator()).state_dict().items()}
    torch.save(state, user_folder / "w64.pt")
    code, output = cli("export", "--module", "mynets:MLPGenerator", "--weights", "w64.pt", "--latent-dim", "10",
                       "--value-range", "0,1", "--out", "exports/m", *SMALL)
    assert code == 0 and "1 tensor(s) cast to the module's dtype ('net.0.weight' float64 -> float32)" in output


def test_interpolation_stays_inside_bounded_latents(tmp_path):
    """slerp between two points of a box can leave it; a truncated-normal export interpolates on the line."""
    from gandeploy.export import ExportOptions
    from gandeploy.latents import distribution

    dist = distribution("truncated_normal", 1.0)
    module = ug.randomize(ug.MLPGenerator())
    options = ExportOptions(max_batch=16, opt_batch=8, latent_distribution=dist)
    folder = export_module(module, tmp_path / "t", latent_dim=10, value_range=(0, 1), options=options, **QUIET)
    with Sampler(folder, backend="onnxruntime") as sampler:
        a, b = sampler.latents(1, 3)[0], sampler.latents(1, 4)[0]
        line = np.stack([(1 - t) * a + t * b for t in np.linspace(0, 1, 5)]).astype(np.float32)
        np.testing.assert_array_equal(sampler.interpolate(3, 4, steps=5), sampler.run(line))


def test_only_the_convolutions_grouped_by_the_batch_are_rewritten(tmp_path):
    import onnx

    module = ug.randomize(ug.ModulatedThenConv(), seed=5)
    folder = export_module(module, tmp_path / "m", latent_dim=8, options=small(), **QUIET)
    ops = [n.op_type for n in onnx.load(str(folder / "generator.onnx")).graph.node]
    assert ops.count("Conv") == 1 and "MatMul" in ops  # the ordinary conv stays a Conv
    with Sampler(folder, backend="onnxruntime") as sampler:
        assert within_one_level(sampler.sample(3, seed=1), module_images(module, latents(1, 3, 8)))
