"""Our StyleGAN2 generator (gandeploy.nets.stylegan.sg2) against images made by NVIDIA's own code.

The fixtures in tests/data/stylegan come from tests/data/stylegan/make_golden.py: NVIDIA's generator class and
constructor kwargs (.json), its state_dict (.safetensors), and its float32 CPU outputs (.npz: z, c, ws_psi0.7 and one
image array per case in the JSON's "image_cases"). A fixture that is missing is skipped, not failed.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gandeploy.nets.stylegan.sg2 import Generator

DATA = Path(__file__).resolve().parents[1] / "data" / "stylegan"
SG2_FIXTURES = ["ada_skip64", "ada_resnet64_cond", "ada_orig32", "ada_skip256", "sg3_stylegan2_64"]
EXPORT_FIXTURE = "ada_resnet64_cond"  # conditional + resnet: the most code paths in one small export
TOLERANCE = 1e-4  # max |ours - NVIDIA|, relative to the largest |NVIDIA| value of the array


def load_fixture(name: str):
    paths = [DATA / f"{name}{suffix}" for suffix in (".json", ".safetensors", ".npz")]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"StyleGAN fixture {name} not there (missing {', '.join(missing)} in {DATA})")
    from safetensors.torch import load_file

    meta = json.loads(paths[0].read_text())
    arrays = dict(np.load(paths[2]))
    return meta, load_file(paths[1]), arrays


def build(meta: dict, state: dict) -> Generator:
    generator = Generator.from_nvidia(meta["class"], meta["init_kwargs"], meta.get("init_args", ()))
    generator.load_state_dict(state, strict=True)
    return generator.eval()


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(ours - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("name", SG2_FIXTURES)
def test_state_dict_names_and_shapes_are_nvidias(name):
    meta, state, _ = load_fixture(name)
    ours = Generator.from_nvidia(meta["class"], meta["init_kwargs"], meta.get("init_args", ())).state_dict()
    assert sorted(ours) == sorted(state)
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("name", SG2_FIXTURES)
def test_images_match_nvidia(name):
    meta, state, arrays = load_fixture(name)
    generator = build(meta, state)
    z, c = torch.from_numpy(arrays["z"]), torch.from_numpy(arrays["c"])
    with torch.inference_mode():
        ws = generator.mapping(z, c, truncation_psi=0.7).numpy()
        assert relative_error(ws, arrays["ws_psi0.7"]) <= TOLERANCE
        assert meta["image_cases"], "fixture without image cases"
        for key, case in meta["image_cases"].items():
            images = generator(z, c, truncation_psi=case["truncation_psi"],
                               truncation_cutoff=case["truncation_cutoff"], noise_mode=case["noise_mode"]).numpy()
            assert images.dtype == np.float32 and images.shape == arrays[key].shape, key
            error = relative_error(images, arrays[key])
            assert error <= TOLERANCE, f"{name} {key}: relative error {error:.3g}"


def test_onnx_export_has_a_dynamic_batch_and_matches_nvidia(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    meta, state, arrays = load_fixture(EXPORT_FIXTURE)
    generator = build(meta, state)
    z, c = torch.from_numpy(arrays["z"]), torch.from_numpy(arrays["c"])
    example = (z[:2], c[:2])  # exported at batch 2, then run at other sizes
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(generator, example, dynamo=True, dynamic_shapes=({0: batch}, {0: batch}),
                                opset_version=18, verbose=False)
    path = tmp_path / "sg2.onnx"
    program.save(str(path))

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z", "c"]
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # symbolic, not frozen at 2
    # the export runs the defaults: psi 1, no cutoff, the stored noise
    case = meta["image_cases"]["psi1.0_const"]
    assert (case["truncation_psi"], case["truncation_cutoff"], case["noise_mode"]) == (1.0, None, "const")
    reference = arrays["psi1.0_const"]
    num_samples = len(arrays["z"])
    for n in (1, 3, 8):
        rows = np.arange(n) % num_samples  # the fixture's samples, repeated when it has fewer than n
        images = session.run(None, {"z": arrays["z"][rows], "c": arrays["c"][rows]})[0]
        assert images.shape == (n, *reference.shape[1:])
        error = relative_error(images, reference[rows])
        assert error <= TOLERANCE, f"ONNX Runtime at batch {n}: relative error {error:.3g}"


def test_random_noise_is_refused():
    generator = Generator(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3,
                          mapping_kwargs={"num_layers": 1}, synthesis_kwargs={"channel_base": 64, "channel_max": 8})
    z = torch.zeros(1, 8)
    with pytest.raises(ValueError, match="random"):
        generator(z, noise_mode="random")
    with pytest.raises(ValueError, match="noise_mode"):
        generator(z, noise_mode="bogus")
    assert generator(z, noise_mode="none").shape == (1, 3, 8, 8)
