"""FID-tracked training: FID and KID of the EMA generator in log.jsonl, generator/ the best by FID,
generator-latest/ the latest, both kept through a resume."""

import json

import pytest

from conftest import RECIPES, cli, tiny_overrides
from gandeploy.errors import RecipeError
from gandeploy.recipe import load_recipe


def step_of(folder):
    return json.loads((folder / "config.json").read_text())["step"]


def test_fid_tracked_run_keeps_best_and_latest(fid_net, tmp_path):
    run = tmp_path / "run"
    args = ["train", str(RECIPES / "dcgan_mnist.yaml"), *tiny_overrides(steps=4), "train.eval_every=2",
            "train.eval_samples=16", "--out", str(run), "--no-progress"]
    code, output = cli(*args)
    assert code == 0, output
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evals = [r for r in records if "fid" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(r["fid"] > 0 and "kid" in r for r in evals)
    best = min(evals, key=lambda r: r["fid"])
    config = json.loads((run / "generator" / "config.json").read_text())
    assert config["step"] == best["step"] and config["fid"] == pytest.approx(best["fid"])
    assert step_of(run / "generator-latest") == 4
    code, output = cli("train", "--resume", str(run), "train.steps=6", "--no-progress")
    assert code == 0, output
    assert step_of(run / "generator-latest") == 6
    evals = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if "fid" in line]
    assert [r["step"] for r in evals] == [2, 4, 6]
    assert step_of(run / "generator") == min(evals, key=lambda r: r["fid"])["step"]
    code, output = cli("export", str(run), "--out", str(tmp_path / "e"), "--no-fp16", "--max-batch", "8",
                       "--opt-batch", "4")
    assert code == 0, output  # export reads generator/: the best


def test_fid_tracking_needs_data_in_memory():
    with pytest.raises(RecipeError, match="train.eval_every: FID during training needs the data in memory"):
        load_recipe(RECIPES / "dcgan_celeba.yaml", ["train.eval_every=1000"])
    with pytest.raises(RecipeError, match="a multiple of train.checkpoint_every"):
        load_recipe(RECIPES / "dcgan_mnist.yaml", ["train.eval_every=700"])
