"""Our StyleGAN3 generator (-T and -R) against images from NVIDIA's own code, in PyTorch and exported to ONNX.

The fixtures in tests/data/stylegan/ (see its README) are small random generators built and perturbed with NVIDIA's
code, their state dicts, and the images NVIDIA's code made from them on CPU in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parents[1] / "data" / "stylegan"
FIXTURES = ["sg3_t64", "sg3_r64_cond"]
RTOL = 1e-4  # of the largest magnitude in NVIDIA's image

# What the exported graph may contain: ops that TensorRT's ONNX parser supports.
TENSORRT_OPS = {"Add", "Clip", "Concat", "Conv", "Div", "Expand", "Gather", "Gemm", "LeakyRelu", "MatMul", "Mul", "Neg",
                "Pad", "Pow", "Reciprocal", "ReduceMean", "ReduceSum", "Reshape", "Shape", "Sin", "Slice", "Sqrt",
                "Squeeze", "Sub", "Tile", "Transpose", "Unsqueeze", "Where", "Constant", "Identity", "Cast"}


def _load(name: str):
    """(our generator with NVIDIA's weights, the fixture's JSON, its arrays) or a skip when the files are missing."""
    paths = [DATA / f"{name}.{ext}" for ext in ("json", "safetensors", "npz")]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"golden StyleGAN3 fixture files missing: {', '.join(missing)} (make them with "
                    "tests/data/stylegan/make_golden.py)")
    from safetensors.torch import load_file

    from gandeploy.nets.stylegan.sg3 import Generator

    meta = json.loads(paths[0].read_text())
    assert meta["class"] == "training.networks_stylegan3.Generator"
    generator = Generator(*meta["init_args"], **meta["init_kwargs"]).eval()
    generator.load_state_dict(load_file(str(paths[1])), strict=True)
    return generator, meta, dict(np.load(paths[2]))


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request):
    return request.param, *_load(request.param)


def _inputs(arrays, n: int):
    """The first n stored latents and labels, cycled when n exceeds them, and the index of each row's original."""
    rows = np.arange(n) % len(arrays["z"])
    z = torch.from_numpy(arrays["z"][rows])
    c = torch.from_numpy(arrays["c"][rows]) if arrays["c"].shape[1] else None
    return z, c, rows


def _relative_error(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got - expected).max() / np.abs(expected).max())


def test_state_dict_matches_nvidia_and_filters_design_the_same(fixture):
    name, generator, meta, _ = fixture
    from safetensors.torch import load_file

    from gandeploy.nets.stylegan.sg3 import Generator

    nvidia = load_file(str(DATA / f"{name}.safetensors"))
    fresh = Generator(*meta["init_args"], **meta["init_kwargs"]).state_dict()
    assert {k: tuple(v.shape) for k, v in fresh.items()} == {k: tuple(v.shape) for k, v in nvidia.items()}
    # our scipy-free filter design gives NVIDIA's filters, so an unloaded module is a usable one too
    filters = [k for k in nvidia if k.endswith(("up_filter", "down_filter"))]
    assert any(nvidia[k].ndim == 2 for k in filters) == (name == "sg3_r64_cond")  # -R has radial filters
    for key in filters:
        torch.testing.assert_close(fresh[key], nvidia[key], rtol=0, atol=1e-7)


def test_mapping_matches_nvidia(fixture):
    _, generator, _, arrays = fixture
    z, c, _ = _inputs(arrays, len(arrays["z"]))
    with torch.no_grad():
        ws = generator.mapping(z, c, truncation_psi=0.7).numpy()
    assert _relative_error(ws, arrays["ws_psi0.7"]) <= RTOL


def test_images_match_nvidia_at_every_stored_case(fixture):
    _, generator, meta, arrays = fixture
    z, c, _ = _inputs(arrays, len(arrays["z"]))  # all stored samples in one batch; other sizes: the ONNX test
    made = {}
    for key, case in meta["image_cases"].items():
        # StyleGAN3 has no noise, so the noise mode only selects a case: one forward per truncation setting
        truncation = (case["truncation_psi"], case["truncation_cutoff"])
        if truncation not in made:
            with torch.no_grad():
                made[truncation] = generator(z, c, truncation_psi=truncation[0], truncation_cutoff=truncation[1],
                                             noise_mode=case["noise_mode"]).numpy()
        images = made[truncation]
        assert images.dtype == np.float32 and images.shape == arrays[key].shape
        error = _relative_error(images, arrays[key])
        assert error <= RTOL, f"{key}: relative error {error:.3g}"


def test_random_noise_is_refused(fixture):
    _, generator, _, arrays = fixture
    z, c, _ = _inputs(arrays, 1)
    with pytest.raises(ValueError, match="noise_mode"):
        generator(z, c, noise_mode="random")


class _Fixed(torch.nn.Module):
    """(z, c) -> images with the truncation fixed, the form that is exported."""

    def __init__(self, generator, psi, cutoff):
        super().__init__()
        self.generator, self.psi, self.cutoff = generator, psi, cutoff

    def forward(self, z, c):
        return self.generator(z, c, truncation_psi=self.psi, truncation_cutoff=self.cutoff)


# -T with truncation up to a cutoff, -R (radial filters, labels) without truncation
EXPORT_CASES = {"sg3_t64": "psi0.7_cutoff2_const", "sg3_r64_cond": "psi1.0_const"}


@pytest.mark.parametrize("name", ["sg3_r64_cond"])  # -T goes through the whole export in test_stylegan_export
def test_onnx_export_matches_nvidia_in_onnxruntime(name, tmp_path):
    import onnx
    import onnxruntime as ort

    generator, meta, arrays = _load(name)
    key = EXPORT_CASES[name]
    case = meta["image_cases"][key]
    model = _Fixed(generator, case["truncation_psi"], case["truncation_cutoff"]).eval()
    z, c, _ = _inputs(arrays, 2)  # batch 2: with 1 the exporter would fix the batch axis
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = {"z": {0: batch}, "c": {0: batch} if c is not None else None}
    program = torch.onnx.export(model, (z, c), dynamo=True, dynamic_shapes=shapes, opset_version=18)
    path = tmp_path / f"{name}.onnx"
    program.save(str(path))

    graph = onnx.load(str(path)).graph
    ops = {node.op_type for node in graph.node}
    assert ops <= TENSORRT_OPS, f"ops outside the checked set: {sorted(ops - TENSORRT_OPS)}"
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch axis
    # every convolution's weight is a constant (no per-sample weights, no grouped conv over the batch)
    constants = {t.name for t in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    assert all(node.input[1] in constants for node in graph.node if node.op_type == "Conv")

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for n in (1, 3, 8):
        z, c, rows = _inputs(arrays, n)
        feeds = dict(zip(names, [z.numpy()] + ([c.numpy()] if c is not None else [])))
        images = session.run(None, feeds)[0]
        assert images.dtype == np.float32 and images.shape == (n, 3, 64, 64)
        error = _relative_error(images, arrays[key][rows])
        assert error <= RTOL, f"{key} at batch {n} in ONNX Runtime: relative error {error:.3g}"
