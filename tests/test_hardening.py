"""Hostile names, kills at the worst moment, damaged files and full disks: one line, nothing lost, nothing
replaced that gandeploy did not write."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import cli, tiny_overrides
from gandeploy import Sampler, SamplerError
from gandeploy.errors import ArtifactError, RecipeError
from gandeploy.formats.manifest import load_export
from gandeploy.recipe import load_recipe

RECIPE = "recipes/dcgan_mnist.yaml"


def run_copy(tiny_run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(tiny_run, target)
    return target


def weights(run_dir):
    return load_file(str(run_dir / "generator" / "model.safetensors"))


# ---- names from files never become paths -----------------------------------------------------------------------


@pytest.mark.parametrize("hostile", ["../victim", "/tmp/victim-abs", "a/b", "..", ".hidden", "x" * 200])
def test_run_name_from_a_config_never_becomes_a_path(tiny_run, tmp_path, monkeypatch, hostile):
    monkeypatch.chdir(tmp_path)
    run = run_copy(tiny_run, tmp_path)
    config = json.loads((run / "generator" / "config.json").read_text())
    (run / "generator" / "config.json").write_text(json.dumps({**config, "run_name": hostile}))
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    code, output = cli("export", str(run), "--no-fp16")
    assert code == 2 and "run_name" in output and "is not a plain name" in output, output
    assert (victim / "precious.txt").read_text() == "keep me" and not (tmp_path / "exports").exists()


def test_a_folder_gandeploy_did_not_write_is_never_replaced(tiny_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, output = cli("export", str(tiny_run), "--out", str(mine), "--no-fp16", "--max-batch", "8", "--opt-batch", "4")
    assert code == 2 and "refusing to replace" in output and "gandeploy did not write it" in output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    link = tmp_path / "link"
    link.symlink_to(mine)
    code, output = cli("export", str(tiny_run), "--out", str(link), "--no-fp16")
    assert code == 2 and "it is a link" in output
    # an export of ours is replaced on re-export
    out = tmp_path / "ours"
    for _ in range(2):
        code, output = cli("export", str(tiny_run), "--out", str(out), "--no-fp16", "--max-batch", "8",
                           "--opt-batch", "4")
        assert code == 0, output
    assert (out / ".gandeploy").is_file()


def test_recipe_and_manifest_names_are_checked(exports, tmp_path):
    with pytest.raises(RecipeError, match="name: the run folder name '../x' is not a plain name"):
        load_recipe(RECIPE, ["name=../x"])
    folder = tmp_path / "e"
    shutil.copytree(exports["uint8"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["engines"] = [{"file": "../../etc/passwd", "precision": "fp16", "size": 1, "sha256": "0" * 64}]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"engines\[0\].file '../../etc/passwd' is not a plain name"):
        load_export(folder)


def test_sweep_touches_only_what_we_named_and_puts_back_a_folder_moved_aside(tmp_path):
    from gandeploy.formats.files import sweep

    dead = 2**22 + 4321
    (tmp_path / ".tmp-notes-12").write_text("a user's file")  # not ours: left alone
    (tmp_path / f".old-photos-{dead}").mkdir()
    (tmp_path / f".old-photos-{dead}" / "keep.jpg").write_bytes(b"x")
    (tmp_path / f".tmp-model-{dead}-0123abcd").mkdir()  # a killed export's half-written folder
    aside = tmp_path / f".old-model-{dead}-89abcdef"  # killed between the two renames: model/ is missing
    aside.mkdir()
    (aside / "manifest.json").write_text("{}")
    done = sweep(tmp_path, names={"model"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".old-photos-" + str(dead), ".tmp-notes-12", "model"]
    assert (tmp_path / "model" / "manifest.json").read_text() == "{}" and len(done) == 2


# ---- crash safety of training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["stale", "missing", "half-updated"])
def test_resume_after_a_kill_around_the_generator_rewrites_it(tiny_run, tmp_path, damage):
    """Killed after the last checkpoint but before (or while) generator/ was rewritten: resume finds the generator
    behind the checkpoint and writes it again, equal to the uninterrupted run's."""
    run = run_copy(tiny_run, tmp_path)
    reference = weights(run)
    config_file = run / "generator" / "config.json"
    config = json.loads(config_file.read_text())
    if damage == "stale":  # the generator of an earlier step
        stale = {k: (v * 0.5).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in reference.items()}
        from safetensors.numpy import save_file

        save_file(stale, str(run / "generator" / "model.safetensors"))
        config_file.write_text(json.dumps({**config, "step": config["step"] - 2}))
    elif damage == "missing":
        shutil.rmtree(run / "generator")
    else:  # new weights, old config: what a kill between the two file replacements leaves
        config_file.write_text(json.dumps({**config, "step": config["step"] - 2}))
    code, output = cli("train", "--resume", str(run), "--no-progress")
    assert code == 0, output
    assert "nothing to do" in output
    assert json.loads(config_file.read_text())["step"] == config["step"]
    again = weights(run)
    assert set(again) == set(reference) and all(np.array_equal(again[k], reference[k]) for k in reference)


def test_resume_cleans_leftovers_repairs_the_log_and_refuses_what_it_cannot_use(tiny_run, tmp_path):
    run = run_copy(tiny_run, tmp_path)
    dead = 2**22 + 12345  # above any pid this machine hands out
    leftovers = [run / f".tmp-generator-{dead}-0123abcd", run / "checkpoints" / f".tmp-step-0000004.safetensors-{dead}-"
                 f"89abcdef", run / f".old-generator-{dead}-0badf00d"]
    for path in leftovers:
        path.write_bytes(b"x" * 1000)
    live = run / ".tmp-generator-1-0123abcd"  # pid 1 is alive: a writer that may still be at work
    live.write_bytes(b"x")
    log = run / "log.jsonl"
    log.write_bytes(log.read_bytes() + b'{"step": 4, "d_lo')  # a power cut mid-line
    code, output = cli("train", "--resume", str(run), "train.steps=6", "--no-progress")
    assert code == 0, output
    assert not any(p.exists() for p in leftovers) and live.exists()
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["step"] for r in lines][-2:] == [5, 6]
    # every checkpoint unreadable: refused, and nothing is overwritten
    for path in (run / "checkpoints").glob("step-*.safetensors"):
        path.write_bytes(b"damaged")
    code, output = cli("train", "--resume", str(run), "train.steps=8", "--no-progress")
    assert code == 2 and "checkpoint(s) can be read" in output and "step-0000006" in output
    assert all(p.read_bytes() == b"damaged" for p in (run / "checkpoints").glob("step-*.safetensors"))


def test_a_damaged_or_empty_recipe_is_refused_in_one_line(tiny_run, tmp_path):
    run = run_copy(tiny_run, tmp_path)
    recipe = run / "recipe.yaml"
    recipe.write_text("")
    code, output = cli("train", "--resume", str(run), "--no-progress")
    assert code == 2 and "is empty" in output and len(output.strip().splitlines()) == 1
    recipe.write_text(load_recipe(RECIPE, tiny_overrides() + ["model.g_width=16"]).to_yaml())  # not the run's
    code, output = cli("train", "--resume", str(run), "train.steps=6", "--no-progress")
    assert code == 2 and "does not fit the recipe" in output and len(output.strip().splitlines()) == 1
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe\x00name: x")
    code, output = cli("train", str(tmp_path / "bad.yaml"))
    assert code == 2 and "not UTF-8" in output


# ---- damaged files: one line naming the file and the field ----------------------------------------------------


@pytest.mark.parametrize("change, field", [
    (lambda m: m["generator"].update(latent_dim=-3), "generator: latent_dim"),
    (lambda m: m["generator"].update(value_range=[1.0, 1.0]), "generator: value_range"),
    (lambda m: m.update(generator=[1, 2]), "generator: the file"),
    (lambda m: m.update(output={**m["output"], "shape": ["batch", 32, 32, 1]}), "output.shape"),
    (lambda m: m.update(batch={"min": 4, "opt": 2, "max": 8}), "batch"),
    (lambda m: m.update(inputs=None), "inputs"),
    (lambda m: m["output"].update(kind="jpeg"), "output.kind"),
])
def test_a_manifest_of_the_wrong_shape_names_the_field(exports, tmp_path, change, field):
    folder = tmp_path / "e"
    shutil.copytree(exports["uint8"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, output = cli("verify", str(folder))
    assert code == 2 and field in output and len(output.strip().splitlines()) == 1, output


def test_damaged_bytes_and_configs_are_refused(exports, tiny_run, tmp_path):
    folder = tmp_path / "e"
    shutil.copytree(exports["uint8"], folder)
    (folder / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ArtifactError, match="is not valid JSON"):
        load_export(folder)
    run = run_copy(tiny_run, tmp_path)
    config = json.loads((run / "generator" / "config.json").read_text())
    (run / "generator" / "config.json").write_text(json.dumps({**config, "value_range": [0.5, 0.5]}))
    code, output = cli("sample", str(run), "--out", str(tmp_path / "g.png"))
    assert code == 2 and "value_range" in output and not (tmp_path / "g.png").exists()
    # a damaged ONNX whose checksum was updated to match: ONNX Runtime's own exception never reaches the user
    shutil.copytree(exports["uint8"], tmp_path / "o")
    onnx_file = tmp_path / "o" / "generator.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:5000])
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    from gandeploy.formats.files import sha256

    manifest["artifacts"]["generator.onnx"].update(size=5000, sha256=sha256(onnx_file))
    (tmp_path / "o" / "manifest.json").write_text(json.dumps(manifest))
    code, output = cli("sample", str(tmp_path / "o"), "--backend", "onnxruntime", "--out", str(tmp_path / "x.png"))
    assert code == 2 and "generator.onnx is not an ONNX model" in output and "re-run gandeploy export" in output


def test_sampler_arguments_are_named(exports):
    with pytest.raises(SamplerError, match="path must be a folder path"):
        Sampler(12)
    with Sampler(exports["uint8"], backend="onnxruntime") as sampler:
        with pytest.raises(SamplerError, match="steps=0: interpolate needs an integer from 2"):
            sampler.interpolate(1, 2, steps=0)


# ---- a full disk -------------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MB tmpfs: writes past it fail with ENOSPC. Needs root (mount), as on the CI machine."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()}); needs root")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_loses_nothing(tiny_run, exports, small_disk, tmp_path):
    (small_disk / "filler").write_bytes(b"x" * (1024 * 1024 - 16 * 1024))  # 16 KB left: less than an export needs
    code, output = cli("export", str(tiny_run), "--out", str(small_disk / "e"), "--no-fp16")
    assert code == 2 and "the disk is full" in output and len(output.strip().splitlines()) == 1, output
    assert f"writing {small_disk / 'e'}" in output  # the line names what was being written
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
    code, output = cli("sample", str(exports["uint8"]), "--n", "256", "--scale", "16", "--out",
                       str(small_disk / "g.png"))
    assert code == 2 and "the disk is full" in output and f"writing {small_disk / 'g.png'}" in output, output
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]  # no half-written file or temp left
    run = small_disk / "run"
    (small_disk / "filler").unlink()
    code, output = cli("train", RECIPE, *tiny_overrides(steps=4), "model.g_width=64", "--out", str(run),
                       "--no-progress")
    assert code == 2 and "the disk is full" in output and "--resume" in output, output
