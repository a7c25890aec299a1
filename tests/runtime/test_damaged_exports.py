"""A file the manifest names that does not load is a failure everywhere: verify FAILS it (exit 1, never SKIPPED),
the Sampler, sample and serve refuse it, and `auto` never falls back over it. Each export here is damaged and its
manifest re-hashed, so every checksum matches what is on disk."""

import json
import os
import shutil

import onnx
import pytest

from conftest import cli
from gandeploy import Sampler
from gandeploy.errors import UserError
from gandeploy.formats.files import sha256


def _rehash(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["artifacts"].items():
        if (folder / name).is_file():
            entry.update(size=(folder / name).stat().st_size, sha256=sha256(folder / name))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path):
    path.write_bytes(os.urandom(4096))


def _rename_output(path):
    model = onnx.load(str(path))
    old = model.graph.output[0].name
    model.graph.output[0].name = "pictures"
    for node in model.graph.node:
        node.output[:] = ["pictures" if o == old else o for o in node.output]
    onnx.save(model, str(path))


def _external_data(location):
    def damage(path):
        model = onnx.load(str(path))
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                  size_threshold=0)
        if location != "w.bin":  # onnx refuses to write '..' itself: move the data and point the model at it
            os.replace(path.parent / "w.bin", path.parent / location)
            model = onnx.load(str(path), load_external_data=False)
            for tensor in model.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = location
            path.write_bytes(model.SerializeToString())
    return damage


def _link_outside(path):
    outside = path.parent.parent / f"outside-{path.name}"
    shutil.copyfile(path, outside)  # the same bytes: the checksum matches, the file is not the export's own
    path.unlink()
    path.symlink_to(outside)


DAMAGE = {
    "truncated": ("generator.onnx", _truncate),
    "garbage": ("generator.onnx", _garbage),
    "renamed output": ("generator.onnx", _rename_output),
    "external data in ../": ("generator.onnx", _external_data("../w.bin")),
    "external data beside it": ("generator.onnx", _external_data("w.bin")),
    "a link outside": ("generator.onnx", _link_outside),
    "truncated fp16": ("generator.fp16.onnx", _truncate),
    "garbage references": ("reference.npz", _garbage),
}


@pytest.fixture
def damaged(exports, tmp_path):
    def make(case, kind="uint8"):
        folder = tmp_path / "export" / case.replace(" ", "-").replace(".", "")
        shutil.copytree(exports[kind], folder)
        file, damage = DAMAGE[case]
        damage(folder / file)
        _rehash(folder)
        return folder
    return make


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_verify_fails_a_damaged_export(damaged, case):
    folder = damaged(case)
    code, output = cli("verify", str(folder))
    assert code == 1 and "FAILED" in output, output
    skipped = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert all("needs a CUDA" in line for line in skipped), output  # only what this machine cannot run


@pytest.mark.parametrize("case", ["truncated", "renamed output", "external data beside it", "a link outside"])
def test_the_sampler_and_the_cli_refuse_it_without_falling_back(damaged, case):
    folder = damaged(case)
    with pytest.raises(UserError) as caught:  # auto: torch could run it, but the damaged ONNX is the export's
        Sampler(folder)
    assert "re-export" in str(caught.value) or "re-run gandeploy export" in str(caught.value)
    code, output = cli("sample", str(folder), "--out", str(folder.parent / "grid.png"))
    assert code == 2 and len(output.strip().splitlines()) == 1 and "Warning" not in output, output
    code, output = cli("bench", str(folder), "--backends", "torch,onnxruntime", "--batch-sizes", "1", "--quick",
                       "--out", str(folder.parent / "bench"))
    assert code == 2 and len(output.strip().splitlines()) == 1 and not (folder.parent / "bench").exists(), output


@pytest.mark.parametrize("entry", ["generator.onnx", "generator.fp16.onnx", "reference.npz",
                                   "generator/model.safetensors"])
def test_an_artifact_dropped_from_the_manifest_fails(exports, tmp_path, entry):
    folder = tmp_path / "e"
    shutil.copytree(exports["uint8"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["artifacts"][entry]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    code, output = cli("verify", str(folder))
    assert code != 0 and f"artifacts: {entry} is not listed, though this export made it" in output, output


def test_auto_names_the_first_cause_first(exports, tmp_path, monkeypatch):
    """No backend can run: the line names the one that should have (ONNX Runtime on this CPU), not every
    candidate."""
    folder = tmp_path / "e"
    shutil.copytree(exports["uint8"], folder)
    import dataclasses

    import gandeploy.runtime.backends as backends

    missing = {name: dataclasses.replace(entry, module="gandeploy_no_such_module")  # as if not installed
               for name, entry in backends.REGISTRY.items() if name in ("onnxruntime", "torch")}
    monkeypatch.setattr(backends, "REGISTRY", {**backends.REGISTRY, **missing})
    with pytest.raises(UserError) as caught:
        Sampler(folder)
    message = str(caught.value)
    assert "no backend can run" in message and ": onnxruntime on cpu: onnxruntime is not installed here" in message
    assert "tensorrt" not in message and "--verbose says why" in message
