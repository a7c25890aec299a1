"""`gandeploy generate`: shards whose images are the Sampler's, resumable after SIGKILL, byte-identical."""

import hashlib
import io
import json
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, cli
from gandeploy import Sampler


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name.startswith("shard-")}


def test_npz_shards_hold_the_samplers_images(exports, tmp_path):
    code, output = cli("generate", str(exports["cond"]), "--n", "50", "--shard-size", "16", "--seed", "3",
                       "--out", str(tmp_path / "g"), "--no-progress")
    assert code == 0, output
    record = json.loads((tmp_path / "g" / "shards.json").read_text())
    assert record["complete"] and [s["start"] for s in record["shards"]] == [0, 16, 32, 48]
    parts = [np.load(tmp_path / "g" / s["file"], allow_pickle=False) for s in record["shards"]]
    images = np.concatenate([p["images"] for p in parts])
    labels = np.concatenate([p["labels"] for p in parts])
    np.testing.assert_array_equal(np.concatenate([p["index"] for p in parts]), np.arange(50))
    np.testing.assert_array_equal(labels, np.arange(50) % 10)
    with Sampler(exports["cond"], backend="onnxruntime") as sampler:
        np.testing.assert_array_equal(images, sampler.sample(50, seed=3, labels=labels))


def test_tar_is_the_webdataset_layout_and_png_folders_decode(exports, tmp_path):
    for fmt in ("tar", "png"):
        code, output = cli("generate", str(exports["uint8"]), "--n", "5", "--format", fmt, "--out",
                           str(tmp_path / fmt), "--no-progress")
        assert code == 0, output
    with tarfile.open(tmp_path / "tar" / "shard-000000.tar") as archive:
        names = archive.getnames()
        assert names[:4] == ["s0-0000000000.png", "s0-0000000000.json", "s0-0000000001.png", "s0-0000000001.json"]
        meta = json.loads(archive.extractfile("s0-0000000003.json").read())
        picture = np.asarray(Image.open(io.BytesIO(archive.extractfile("s0-0000000003.png").read())))
        assert all(m.mtime == 0 and m.uid == 0 for m in archive.getmembers())
    assert meta == {"seed": 0, "index": 3}
    with Sampler(exports["uint8"], backend="onnxruntime") as sampler:
        expected = sampler.sample(5, seed=0)
    np.testing.assert_array_equal(picture, expected[3, ..., 0])
    png = np.asarray(Image.open(tmp_path / "png" / "shard-000000" / "s0-0000000004.png"))
    np.testing.assert_array_equal(png, expected[4, ..., 0])


def test_a_killed_run_resumes_to_the_same_bytes(exports, tmp_path):
    args = ["generate", str(exports["uint8"]), "--n", "6000", "--shard-size", "200", "--format", "tar",
            "--no-progress"]
    assert cli(*args, "--out", str(tmp_path / "whole"))[0] == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "gandeploy", *args, "--out", str(killed)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if len(json.loads((killed / "shards.json").read_text())["shards"]) >= 3:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        time.sleep(0.05)  # somewhere inside a later shard
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    record = json.loads((killed / "shards.json").read_text())
    assert not record.get("complete")
    shard = killed / record["shards"][0]["file"]
    shard.write_bytes(b"\0" + shard.read_bytes()[1:])  # a finished shard damaged since: checked, written again
    code, output = cli(*args, "--out", str(killed))
    assert code == 0 and "resuming" in output, output
    assert digests(killed) == digests(tmp_path / "whole")
    assert not [p.name for p in killed.iterdir() if p.name.startswith(".tmp-")]
    assert json.loads((killed / "shards.json").read_text())["complete"]


def test_bad_input(exports, tmp_path):
    out = tmp_path / "g"
    assert cli("generate", str(exports["uint8"]), "--n", "4", "--out", str(out), "--no-progress")[0] == 0
    code, output = cli("generate", str(exports["uint8"]), "--n", "4", "--seed", "9", "--out", str(out))
    assert code == 2 and "holds another generation (seed 0, now 9)" in output
    code, output = cli("generate", str(exports["uint8"]), "--n", "4", "--format", "gif", "--out", str(tmp_path / "x"))
    assert code == 2 and "--format 'gif'" in output
    code, output = cli("generate", str(exports["uint8"]), "--n", "4", "--labels", "3", "--out", str(tmp_path / "y"))
    assert code == 2 and "unconditional" in output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    code, output = cli("generate", str(exports["uint8"]), "--n", "4", "--out", str(tmp_path / "mine"))
    assert code == 2 and "nothing there is replaced" in output
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("fmt", ["npz"])
def test_generate_needs_no_torch(exports, tmp_path, fmt):
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "no_torch.py"), "generate", str(exports["uint8"]),
                             "--n", "20", "--format", fmt, "--out", str(tmp_path / "g"), "--no-progress"],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
