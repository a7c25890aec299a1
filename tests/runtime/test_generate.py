"""`gandeploy generate`: shards whose images are the Sampler's, resumable after SIGKILL, byte-identical."""

import hashlib
import io
import json
import shutil
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
    code, output = cli("generate", str(exports["cond"]), "--n", "4", "--labels", "1,2", "--out", str(tmp_path / "z"))
    assert code == 2 and "a list of labels, one per image, is for gandeploy sample" in output
    code, output = cli("generate", str(exports["cond"]), "--n", "4", "--labels", "x", "--out", str(tmp_path / "z"))
    assert code == 2 and "--labels: 'x' is not an integer or a comma list of them" in output
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


# ---- a tampered shards.json or --out: rebuilt from the intact shards, or one line and exit 2 ---------------------

N_ARGS = ("--n", "10", "--shard-size", "4", "--no-progress")  # shards 0..3, 4..7, 8..9


def _run(exports, out, fmt="npz"):
    return cli("generate", str(exports["uint8"]), *N_ARGS, "--format", fmt, "--out", str(out))


def contents(folder):
    """Everything under `folder` (shards.json aside) -> its sha256, or 'link'/'folder': the shards, and any
    leftover (a .tmp-* or .old-* file, folder or link) a run should not leave."""
    def what(p):
        return "link" if p.is_symlink() else "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return {str(p.relative_to(folder)): what(p) for p in sorted(folder.rglob("*")) if p.name != "shards.json"}


@pytest.fixture(scope="module")
def clean(exports, tmp_path_factory):
    """fmt -> (files, shards.json entries) of an untouched run."""
    def make(fmt):
        out = tmp_path_factory.mktemp("clean") / fmt
        assert _run(exports, out, fmt)[0] == 0
        return contents(out), json.loads((out / "shards.json").read_text())["shards"]
    return {fmt: make(fmt) for fmt in ("npz", "png")}


def _assert_whole(out, clean, fmt="npz"):
    """The full, correct set: the same files as an untouched run (nothing left over) and a complete record of them."""
    files, shards = clean[fmt]
    record = json.loads((out / "shards.json").read_text())
    assert contents(out) == files
    assert record["complete"] is True and json.dumps(record["shards"]) == json.dumps(shards)  # 4, not 4.0


def _entry(field, value):
    def damage(shards, out):
        if value is _DELETE:
            del shards[1][field]
        else:
            shards[1][field] = value
    return damage


_DELETE = object()


def _set(index, value):
    def damage(shards, out):
        shards[index] = value
    return damage


def _copy_over_and_delete(shards, out):  # the tester's case: entry 1 claims shard 0's file; images 4..7 deleted
    shards[1] = {**shards[0], "start": 4}
    (out / "shard-000001.npz").unlink()


def _swap_files(shards, out):
    for key in ("file", "sha256"):
        shards[0][key], shards[1][key] = shards[1][key], shards[0][key]


def _link_to_another(shards, out):
    (out / "shard-000001.npz").unlink()
    (out / "shard-000001.npz").symlink_to(out / "shard-000000.npz")


TAMPERED = {
    "duplicated over another, file deleted": _copy_over_and_delete,
    "duplicated exactly": lambda shards, out: shards.append(dict(shards[0])),
    "swapped files": _swap_files,
    "swapped order": lambda shards, out: shards.reverse(),
    "entry missing": lambda shards, out: shards.pop(1),
    "all entries missing": lambda shards, out: shards.clear(),
    "entry a number": _set(1, 7),
    "entry null": _set(1, None),
    "entry a list": _set(1, [4, 4]),
    "entry a string": _set(1, "shard-000001.npz"),
    "count wrong": _entry("count", 3),
    "count 2**70": _entry("count", 2**70),
    "count 0": _entry("count", 0),
    "count negative": _entry("count", -4),
    "count float": _entry("count", 4.0),
    "count bool": _entry("count", True),
    "count string": _entry("count", "4"),
    "count missing": _entry("count", _DELETE),
    "start float": _entry("start", 4.0),
    "start negative": _entry("start", -4),
    "start not on a boundary": _entry("start", 5),
    "start beyond n": _entry("start", 12),
    "start 2**70": _entry("start", 2**70),
    "start bool": _entry("start", True),
    "start string": _entry("start", "4"),
    "start null": _entry("start", None),
    "start missing": _entry("start", _DELETE),
    "file another shard's": _entry("file", "shard-000000.npz"),
    "file a path": _entry("file", "../shard-000001.npz"),
    "file absolute": _entry("file", "/etc/passwd"),
    "file hidden": _entry("file", ".gandeploy"),
    "file a number": _entry("file", 1),
    "file missing": _entry("file", _DELETE),
    "sha256 wrong": _entry("sha256", "0" * 64),
    "sha256 a number": _entry("sha256", 5),
    "sha256 missing": _entry("sha256", _DELETE),
    "entry beyond --n": lambda shards, out: shards.append({**shards[2], "start": 12, "file": "shard-000003.npz"}),
    "overlapping entry": lambda shards, out: shards.append({**shards[1], "start": 2}),
    "file deleted": lambda shards, out: (out / "shard-000002.npz").unlink(),
    "file garbage": lambda shards, out: (out / "shard-000001.npz").write_bytes(b"garbage"),
    "file a link to another shard": _link_to_another,
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_record_is_rebuilt_from_the_intact_shards(exports, clean, tmp_path, case):
    out = tmp_path / "g"
    assert _run(exports, out)[0] == 0
    record = json.loads((out / "shards.json").read_text())
    TAMPERED[case](record["shards"], out)
    (out / "shards.json").write_text(json.dumps(record))  # "complete": true stays, as the tester left it
    code, output = _run(exports, out)
    assert code == 0 and "Traceback" not in output, output
    _assert_whole(out, clean)
    assert _run(exports, out)[0] == 0 and "wrote 0 images" in _run(exports, out)[1]  # and stays whole
    _assert_whole(out, clean)


def test_a_dropped_entry_is_one_line_naming_the_field(exports, clean, tmp_path):
    out = tmp_path / "g"
    assert _run(exports, out)[0] == 0
    record = json.loads((out / "shards.json").read_text())
    record["shards"][1]["start"], record["shards"][2]["count"] = 4.5, 2**70
    (out / "shards.json").write_text(json.dumps(record))
    code, output = _run(exports, out)
    dropped = [line for line in output.splitlines() if "shards.json" in line]
    assert code == 0 and len(dropped) == 1, output
    assert "shards[1].start: expected an integer, got float" in dropped[0] and "1 more entries dropped" in dropped[0]
    assert "wrote 6 images in 2 shard(s)" in output
    _assert_whole(out, clean)


def test_a_stale_complete_record_never_outlives_a_killed_rerun(exports, tmp_path, monkeypatch):
    """The checked record is written before any shard: killed in the first shard, no 'complete' over a hole."""
    from gandeploy.runtime import generate as module

    out = tmp_path / "g"
    assert _run(exports, out)[0] == 0
    record = json.loads((out / "shards.json").read_text())
    (out / "shard-000001.npz").unlink()
    assert record["complete"]

    def killed(*args, **kwargs):
        raise RuntimeError("killed inside the first shard")

    monkeypatch.setattr(module, "write_shard", killed)
    with pytest.raises(RuntimeError, match="killed"):
        module.write_shards(exports["uint8"], out, module.Plan(n=10, seed=0, label=None, format="npz", shard_size=4),
                        progress=False, log=lambda _: None)
    record = json.loads((out / "shards.json").read_text())
    assert not record["complete"] and [s["start"] for s in record["shards"]] == [0, 8]


@pytest.mark.parametrize("fmt", ["npz", "tar"])
def test_a_shard_replaced_by_a_folder_is_one_line_and_kept(exports, clean, tmp_path, fmt):
    out = tmp_path / "g"
    assert _run(exports, out, fmt)[0] == 0
    shard = out / f"shard-000001.{fmt}"
    shard.unlink()
    shard.mkdir()
    (shard / "notes.txt").write_text("mine")
    code, output = _run(exports, out, fmt)
    assert code == 2 and len(output.strip().splitlines()) == 1 and "is a folder where generate writes a file" in output
    assert (shard / "notes.txt").read_text() == "mine"  # not ours to delete
    shutil.rmtree(shard)
    code, output = _run(exports, out, fmt)
    assert code == 0 and json.loads((out / "shards.json").read_text())["complete"], output
    if fmt == "npz":
        _assert_whole(out, clean)


def test_shards_json_replaced_by_a_folder_is_one_line(exports, clean, tmp_path):
    out = tmp_path / "g"
    assert _run(exports, out)[0] == 0
    (out / "shards.json").unlink()
    (out / "shards.json").mkdir()
    code, output = _run(exports, out)
    assert code == 2 and len(output.strip().splitlines()) == 1 and "shards.json is a folder" in output, output
    (out / "shards.json").rmdir()
    assert _run(exports, out)[0] == 0  # a folder of ours without a record: every shard checked by writing it again
    _assert_whole(out, clean)


@pytest.mark.parametrize("damage", ["a file", "a link to a folder outside", "a damaged png", "a subfolder inside",
                                    "an extra file inside"])
def test_a_replaced_png_shard_is_rewritten_and_leaves_nothing_behind(exports, clean, tmp_path, damage):
    out = tmp_path / "g"
    assert _run(exports, out, "png")[0] == 0
    shard = out / "shard-000001"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    if damage in ("a file", "a link to a folder outside"):
        shutil.rmtree(shard)
        shard.write_bytes(b"x") if damage == "a file" else shard.symlink_to(outside, target_is_directory=True)
    elif damage == "a damaged png":
        first = sorted(shard.iterdir())[0]
        first.write_bytes(first.read_bytes()[:-5])
    elif damage == "a subfolder inside":
        (shard / "sub").mkdir()
        (shard / "sub" / "x.png").write_bytes(b"x")
    else:
        (shard / "extra.png").write_bytes(b"x")
    code, output = _run(exports, out, "png")
    assert code == 0 and "Traceback" not in output, output
    _assert_whole(out, clean, "png")  # no .old-shard-* or .tmp-* beside it
    assert [p.name for p in outside.iterdir()] == ["keep.txt"]


def test_out_a_dangling_link_or_under_a_file_is_one_line(exports, clean, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    for out, says in ((link, "which does not exist"), (tmp_path / "file" / "g", "is under"),
                      (tmp_path / "file", "is a file, not a folder")):
        code, output = _run(exports, out)
        assert code == 2 and len(output.strip().splitlines()) == 1 and says in output, output
        assert output.startswith("error: --out ")
    assert (tmp_path / "file").read_text() == "x" and not (tmp_path / "nowhere").exists()
    (tmp_path / "nowhere").mkdir()  # the link leads somewhere now: generate writes through it
    assert _run(exports, link)[0] == 0
    _assert_whole(tmp_path / "nowhere", clean)


@pytest.mark.parametrize("text", ["{not json", "[]", '{"shards": 5}', '"x"', "null"])
def test_an_unreadable_record_is_refused_in_one_line(exports, tmp_path, text):
    out = tmp_path / "g"
    assert _run(exports, out)[0] == 0
    (out / "shards.json").write_text(text)
    code, output = _run(exports, out)
    assert code == 2 and len(output.strip().splitlines()) == 1 and "shards.json is damaged" in output, output


def test_a_run_killed_before_its_first_record_resumes(exports, clean, tmp_path):
    """A folder holding only generate's mark (killed between the mark and shards.json) is ours to finish."""
    out = tmp_path / "g"
    assert _run(exports, out)[0] == 0
    for p in out.iterdir():
        if p.name != ".gandeploy":
            p.unlink()
    assert _run(exports, out)[0] == 0
    _assert_whole(out, clean)
