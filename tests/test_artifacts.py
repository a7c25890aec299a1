import json
import os

import pytest
import torch

from gandeploy.artifacts import (atomic_path, load_checkpoint, load_generator, save_checkpoint, save_generator)
from gandeploy.errors import ArtifactError
from gandeploy.nets import build_generator

CONFIG = {"family": "dcgan", "latent_dim": 8, "resolution": 28, "channels": 1, "width": 4, "num_classes": 0,
          "embed_dim": 4, "value_range": [-1.0, 1.0]}


def test_generator_round_trip(tmp_path):
    torch.manual_seed(0)
    G = build_generator(CONFIG).eval()
    for m in G.modules():  # non-trivial running statistics must survive the trip too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    save_generator(tmp_path / "g", G, CONFIG)
    loaded, config = load_generator(tmp_path / "g")
    assert config == {"format_version": 1, **CONFIG}
    z = torch.randn(4, 8)
    torch.testing.assert_close(loaded(z), G(z), rtol=0, atol=0)
    assert not loaded.training


def test_save_updates_its_own_folder_and_nobody_elses(tmp_path):
    G = build_generator(CONFIG)
    save_generator(tmp_path / "g", G, {**CONFIG, "step": 1})
    (tmp_path / "g" / "notes.txt").write_text("not ours")
    with torch.no_grad():
        next(G.parameters()).add_(1.0)
    save_generator(tmp_path / "g", G, {**CONFIG, "step": 2})  # file by file: a generator is readable throughout
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [".gandeploy", "config.json", "model.safetensors",
                                                                  "notes.txt"]
    loaded, config = load_generator(tmp_path / "g")
    assert config["step"] == 2 and torch.equal(next(loaded.parameters()), next(G.parameters()))
    assert [p.name for p in tmp_path.iterdir()] == ["g"]  # no temporary files left behind
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="refusing to replace .*gandeploy did not write it"):
        save_generator(foreign, G, CONFIG)
    assert [p.name for p in foreign.iterdir()] == ["data.bin"]


def test_bad_generator_folders(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load_generator(tmp_path / "missing")
    folder = tmp_path / "g"
    save_generator(folder, build_generator(CONFIG), CONFIG)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="unreadable or truncated"):
        load_generator(folder)
    weights.unlink()
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        load_generator(folder)
    save_generator(folder, build_generator(CONFIG), CONFIG)
    (folder / "config.json").write_text(json.dumps({**CONFIG, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version 99"):
        load_generator(folder)
    (folder / "config.json").write_text(json.dumps({**CONFIG, "format_version": 1, "width": 8}))
    with pytest.raises(ArtifactError, match="weights do not match config.json"):
        load_generator(folder)


def test_checkpoint_tree_round_trip_without_pickle(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), betas=(0.5, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"step": 3, "opt": opt.state_dict(), "rng": torch.get_rng_state(), "none": None, "t": (1, 2.5)}
    save_checkpoint(tmp_path / "c.safetensors", state)
    back = load_checkpoint(tmp_path / "c.safetensors")
    assert back["step"] == 3 and back["none"] is None and back["t"] == (1, 2.5)
    assert torch.equal(back["rng"], state["rng"])
    assert list(back["opt"]["state"]) == [0, 1]  # integer keys survive
    fresh = torch.optim.Adam(model.parameters())
    fresh.load_state_dict(back["opt"])
    assert fresh.param_groups[0]["betas"] == (0.5, 0.9)
    torch.testing.assert_close(fresh.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # the file is plain safetensors: a header, tensors, and JSON metadata
    header_len = int.from_bytes((tmp_path / "c.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "c.safetensors").read_bytes()[8:8 + header_len])
    assert header["__metadata__"]["format"] == "gandeploy-checkpoint/1"


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "good"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_written_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        save_generator(tmp_path / "g", build_generator(CONFIG), CONFIG)
    finally:
        os.umask(umask)
    assert (tmp_path / "g").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "g" / "model.safetensors").stat().st_mode & 0o777 == 0o644
