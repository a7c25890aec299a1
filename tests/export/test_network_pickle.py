"""NVIDIA network pickles read without running them: the restricted unpickler on NVIDIA-layout pickles that the
tests write themselves (nvidia_layout.py), hostile pickles refused in one line with nothing written."""

import collections
import os
import pickle

import pytest
import torch

import nvidia_layout as nv
from conftest import cli
from gandeploy.errors import UserError
from gandeploy.export.network_pickle import Captured, network, read_network_pickle
from gandeploy.nets.stylegan import nvidia_class

FIXTURES = ["ada_skip64", "ada_resnet64_cond", "ada_orig32", "ada_skip256", "sg3_stylegan2_64", "sg3_t64",
            "sg3_r64_cond"]


def need(name):
    if not (nv.DATA / f"{name}.safetensors").is_file():
        pytest.skip(f"golden fixture {name} is not in tests/data/stylegan")


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("protocol", [2, 4])
def test_a_network_is_captured_by_name_with_its_init_arguments(tmp_path, name, protocol):
    need(name)
    path = nv.write_fixture_pickle(name, tmp_path / "network.pkl", protocol=protocol)
    data = read_network_pickle(path)
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    assert data["training_set_kwargs"] == {"path": "datasets/x.zip", "resolution": 64}
    g = network(data, path, "G_ema")
    state, record, _ = nv.fixture(name)
    captured = g.state_dict()
    assert sorted(captured) == sorted(state)
    assert all(torch.equal(captured[k], state[k]) for k in state)
    assert g.init_kwargs == record["init_kwargs"] and g.persistence_version == 6
    assert nvidia_class(g.classes(), g.init_kwargs) == record["class"]  # which repository, told by the data
    assert nvidia_class(network(data, path, "D").classes(), {}) is None


def test_the_embedded_source_is_kept_as_text_and_never_run(tmp_path):
    need("ada_skip64")
    marker = tmp_path / "marker"
    path = nv.write_fixture_pickle("ada_skip64", tmp_path / "payload.pkl", source=nv.payload_source(marker))
    g = network(read_network_pickle(path), path, "G_ema")
    assert "the pickle ran code" in g.source and not marker.exists()


def hostile(tmp_path, obj, name="hostile.pkl", protocol=4):
    path = tmp_path / name
    with nv.nvidia_modules():
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_that_calls_os_system_is_refused_in_one_line(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = hostile(tmp_path, {"G_ema": nv.Call(os.system, f"touch {marker}")}, protocol=protocol)
    out = tmp_path / "exports" / "x"
    code, output = cli("export", "--stylegan", str(path), "--out", str(out))
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert "posix.system" in output or "os.system" in output
    assert "nothing in it was run" in output
    assert not marker.exists() and not out.exists() and not out.parent.exists()


@pytest.mark.parametrize("obj", [
    nv.Call(eval, "1"), nv.Call(getattr, collections.OrderedDict, "fromkeys"), nv.Call(torch.load, "x"),
    nv.Call(__import__, "os")])
def test_every_other_global_is_refused_by_name(tmp_path, obj):
    path = hostile(tmp_path, {"G_ema": obj})
    with pytest.raises(UserError, match="refused to load: the pickle asks for"):
        read_network_pickle(path)


def test_tensorflow_era_pickles_are_named_as_such(tmp_path):
    path = tmp_path / "karras2019stylegan-ffhq-1024x1024.pkl"
    # written by hand: (G, D, Gs) tuple of Network objects, as the TF code pickled them
    body = b"\x80\x02cdnnlib.tflib.network\nNetwork\n)\x81}b."
    path.write_bytes(body)
    with pytest.raises(UserError, match="TensorFlow-era"):
        read_network_pickle(path)


def test_network_choice_and_non_generators(tmp_path):
    need("sg3_t64")
    path = nv.write_fixture_pickle("sg3_t64", tmp_path / "network.pkl")
    with pytest.raises(UserError, match="has no network 'G_avg'; it holds G, D, G_ema"):
        network(read_network_pickle(path), path, "G_avg")
    code, output = cli("export", "--stylegan", str(path), "--network", "D", "--out", str(tmp_path / "out"))
    assert code == 2 and "not a StyleGAN2 or StyleGAN3 generator" in output, output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not_a_dict", "plain_tensors"])
def test_damaged_or_foreign_files_get_one_line(tmp_path, damage):
    need("ada_skip64")
    path = nv.write_fixture_pickle("ada_skip64", tmp_path / "network.pkl")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "not_a_dict":
        path = hostile(tmp_path, [1, 2, 3])
    else:
        path = hostile(tmp_path, {"weight": torch.zeros(3)})
    code, output = cli("export", "--stylegan", str(path), "--out", str(tmp_path / "out"))
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert not (tmp_path / "out").exists()


def test_captured_state_skips_what_is_not_a_tensor():
    child = Captured("SynthesisLayer", 6, "", parameters={"weight": torch.ones(2)}, buffers={"noise_const": None})
    top = Captured("Generator", 6, "", buffers={"w_avg": torch.zeros(2)}, modules={"b4": child, "x": None})
    assert sorted(top.state_dict()) == ["b4.weight", "w_avg"]
    assert top.classes() == {"": "Generator", "b4": "SynthesisLayer"}
