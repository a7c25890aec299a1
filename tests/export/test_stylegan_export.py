"""`gandeploy export --stylegan`: NVIDIA-layout pickles of NVIDIA-made generators (tests/data/stylegan) exported,
then sampled through ONNX Runtime and compared with the images NVIDIA's own code produced for the same z, labels,
psi and noise mode; the export verifies and the embedded source never runs."""

import json

import numpy as np
import pytest

import nvidia_layout as nv
from conftest import cli
from gandeploy import Sampler
from gandeploy.export.tensorrt import unsupported_ops

# fixture, psi, cutoff, noise, the NVIDIA image key it must reproduce, FP16 too: every architecture and both
# repositories; FP16 on one StyleGAN2 and one StyleGAN3 (a StyleGAN3 export takes about a minute here)
CASES = [
    ("ada_skip64", 0.7, None, "const", "psi0.7_const", True),
    ("ada_resnet64_cond", 1.0, None, "const", "psi1.0_const", False),
    ("ada_orig32", 0.7, None, "none", "psi0.7_none", False),
    ("ada_skip256", 0.7, None, "const", "psi0.7_const", False),
    ("sg3_stylegan2_64", 0.7, 2, "const", "psi0.7_cutoff2_const", False),
    ("sg3_t64", 0.7, None, "const", "psi0.7_const", True),
    ("sg3_r64_cond", 0.7, 2, "const", "psi0.7_cutoff2_const", False),
]
SMALL = ["--opt-batch", "2", "--max-batch", "3"]


def export(tmp_path, name, psi, cutoff, noise, *extra):
    if not (nv.DATA / f"{name}.safetensors").is_file():
        pytest.skip(f"golden fixture {name} is not in tests/data/stylegan")
    marker = tmp_path / "marker"
    pkl = nv.write_fixture_pickle(name, tmp_path / f"{name}.pkl", source=nv.payload_source(marker))
    out = tmp_path / "exports" / name
    args = ["export", "--stylegan", str(pkl), "--psi", str(psi), "--noise", noise, "--out", str(out), *SMALL, *extra]
    if cutoff is not None:
        args += ["--truncation-cutoff", str(cutoff)]
    code, output = cli(*args)
    assert code == 0, output
    assert not marker.exists(), "the pickle's embedded source ran"
    return out, output


@pytest.mark.parametrize("name, psi, cutoff, noise, key, fp16", CASES, ids=[c[0] for c in CASES])
def test_exports_reproduce_nvidias_images(tmp_path, name, psi, cutoff, noise, key, fp16):
    out, output = export(tmp_path, name, psi, cutoff, noise, "--output", "float", "--fp16" if fp16 else "--no-fp16")
    _, record, golden = nv.fixture(name)
    z, labels, expected = golden["z"], golden.get("labels"), golden[key]
    labels = labels if record["init_kwargs"]["c_dim"] else None
    scale = np.abs(expected).max()
    with Sampler(out, backend="onnxruntime") as sampler:
        for n in (1, 3, 8):
            rows = np.arange(n) % len(z)  # the fixtures hold 8, 4 or 1 samples (256 px): repeat them
            got = sampler.run(z[rows], None if labels is None else labels[rows])
            assert got.shape == expected[rows].shape
            err = np.abs(got - expected[rows]).max()
            assert err <= 1e-3 * scale, (n, err, scale)
    # TensorRT's ONNX parser takes every op (checked against its operator table: no GPU or TensorRT here)
    for file in ("generator.onnx", "generator.fp16.onnx") if fp16 else ("generator.onnx",):
        assert unsupported_ops(out / file) == [], file
    manifest = json.loads((out / "manifest.json").read_text())
    source = manifest["source"]
    assert source["format"] == "nvidia-network-pickle" and source["network"] == "G_ema"
    assert source["truncation_psi"] == psi and source["truncation_cutoff"] == cutoff
    assert source["noise_mode"] == noise and source["init_kwargs"] == record["init_kwargs"]
    assert manifest["generator"]["family"] == nv.family_of_class(record["class"])
    code, output = cli("verify", str(out))
    assert code == 0 and "FAILED" not in output, output


def test_uint8_export_matches_nvidias_conversion_within_one_level(tmp_path):
    """gen_images.py: (x * 127.5 + 128).clamp(0, 255).to(uint8); ours rounds (x + 1) * 127.5."""
    out, output = export(tmp_path, "ada_orig32", 0.7, None, "const", "--no-fp16")
    golden = nv.fixture("ada_orig32")[2]
    nvidia = np.clip(golden["psi0.7_const"] * 127.5 + 128, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    with Sampler(out, backend="onnxruntime") as sampler:
        got = sampler.run(golden["z"])
    assert got.dtype == np.uint8 and np.abs(got.astype(int) - nvidia).max() <= 1


def test_the_torch_backend_runs_the_generator_folder_of_the_export(tmp_path):
    out, _ = export(tmp_path, "ada_resnet64_cond", 0.7, None, "const", "--no-fp16", "--output", "float")
    golden = nv.fixture("ada_resnet64_cond")[2]
    with Sampler(out, backend="torch") as sampler:
        got = sampler.run(golden["z"], golden["labels"])
    expected = golden["psi0.7_const"]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("args, message", [
    (["--noise", "random"], "--noise random: exports take const or none"),
    (["--psi", "nan"], "--psi nan: expected a finite number"),
    (["--truncation-cutoff", "99"], "--truncation-cutoff 99: this network has 10 w vectors"),
])
def test_bad_options_get_one_line_and_nothing_written(tmp_path, args, message):
    if not (nv.DATA / "ada_skip64.safetensors").is_file():
        pytest.skip("golden fixture ada_skip64 is not in tests/data/stylegan")
    pkl = nv.write_fixture_pickle("ada_skip64", tmp_path / "n.pkl")
    code, output = cli("export", "--stylegan", str(pkl), "--out", str(tmp_path / "out"), *args)
    assert code == 2 and message in output and len(output.strip().splitlines()) == 1, output
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def orig32_generator(tmp_path_factory):
    out, _ = export(tmp_path_factory.mktemp("orig32"), "ada_orig32", 0.7, None, "const", "--no-fp16")
    return out / "generator"


@pytest.mark.parametrize("field, value", [("class", "os.system"), ("psi", "0.7"), ("init_kwargs", [1]),
                                          ("cutoff", -1)])
def test_a_tampered_generator_spec_is_one_line(tmp_path, orig32_generator, field, value):
    """config.json of the export's generator folder is read back (torch backend): its `stylegan` entry is data."""
    import shutil

    from gandeploy.artifacts import load_generator
    from gandeploy.errors import ArtifactError

    folder = shutil.copytree(orig32_generator, tmp_path / "generator")
    spec = json.loads((folder / "config.json").read_text())
    spec["stylegan"][field] = value
    (folder / "config.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError, match="weights do not match config.json") as e:
        load_generator(folder)
    assert "\n" not in str(e.value)
