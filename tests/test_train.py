import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import RECIPES, ROOT, cli, run_module, tiny_overrides
from gandeploy.artifacts import load_checkpoint, load_generator
from gandeploy.recipe import load_recipe
from gandeploy.train import (Trainer, ema_beta, ema_update, latest_checkpoint, learning_rate, list_checkpoints,
                             new_run_dir, standing_statistics, train)


def test_run_folder_has_everything_design_md_lists(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"recipe.yaml", "checkpoints", "generator", "samples", "log.jsonl"} <= names
    assert load_recipe(tiny_run / "recipe.yaml").train.steps == 4
    assert [p.name for p in list_checkpoints(tiny_run)] == ["step-0000002.safetensors", "step-0000004.safetensors"]
    assert sorted(p.name for p in (tiny_run / "samples").iterdir()) == ["step-0000002.png", "step-0000004.png"]
    records = [json.loads(line) for line in (tiny_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert all(math.isfinite(r[k]) for k in ("d_loss", "g_loss", "d_real", "d_fake", "images_per_s"))
        assert 0 < r["d_real"] < 1 and 0 < r["d_fake"] < 1  # ns loss reports probabilities
    G, config = load_generator(tiny_run)
    assert config["latent_dim"] == 16 and config["num_classes"] == 0 and not G.training


@pytest.mark.parametrize("recipe, extra", [
    ("wgan_gp_mnist.yaml", {}),
    ("dcgan_mnist.yaml", {"loss.name": "hinge", "loss.label_smoothing": 0, "model.spectral_norm": "true",
                          "model.d_norm": "none"}),
    ("dcgan_mnist.yaml", {"loss.name": "lsgan", "loss.label_smoothing": 0.1, "loss.instance_noise": 0.1}),
    ("dcgan_mnist.yaml", {"model.name": "mlp", "data.resolution": 32, "train.ema": "false"}),
    ("dcgan_mnist.yaml", {"model.name": "infogan", "data.conditional": "true"}),
    ("wgan_mnist.yaml", {}),
    ("dcgan_mnist.yaml", {"loss.r1_gamma": 1.0, "model.d_norm": "none", "optim.lr_decay": "linear"}),
    ("dcgan_mnist.yaml", {"loss.augment": "translation,cutout"}),
    ("wgan_gp_mnist.yaml", {"loss.augment": "color,translation"}),
])
def test_real_training_steps_give_finite_losses_and_move_the_weights(tmp_path, recipe, extra):
    r = load_recipe(RECIPES / recipe, tiny_overrides(steps=3, **extra))
    trainer = Trainer(r, tmp_path, torch.device("cpu"), progress=False)
    before = [p.detach().clone() for p in trainer.G.parameters()]
    last = trainer.fit()
    assert last["step"] == 3 and all(math.isfinite(last[k]) for k in ("d_loss", "g_loss"))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.G.parameters()))


def test_original_wgan_clips_every_critic_weight_and_uses_rmsprop(tmp_path):
    r = load_recipe(RECIPES / "wgan_mnist.yaml", tiny_overrides(steps=2, **{"loss.clip": 0.005}))
    trainer = Trainer(r, tmp_path, torch.device("cpu"), progress=False)
    assert isinstance(trainer.opt_d, torch.optim.RMSprop) and isinstance(trainer.opt_g, torch.optim.RMSprop)
    assert max(p.abs().max().item() for p in trainer.D.parameters()) > 0.005  # N(0, 0.02) init, BN gamma ~ 1
    trainer.fit()
    largest = max(p.abs().max().item() for p in trainer.D.parameters())
    assert largest <= 0.005 and largest > 0.004  # clipped, not shrunk to nothing


def test_linear_learning_rate_decay_reaches_zero_at_the_last_step(tmp_path):
    r = load_recipe(RECIPES / "dcgan_mnist.yaml", tiny_overrides(steps=4, **{"optim.lr_decay": "linear"}))
    trainer = Trainer(r, tmp_path, torch.device("cpu"), progress=False)
    trainer.fit()  # the last step ran at rate base * (1 - 3/4)
    assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(r.optim.g_lr / 4)
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(r.optim.d_lr / 4)
    late = load_recipe(RECIPES / "dcgan_mnist.yaml", tiny_overrides(steps=10, **{"optim.lr_decay": "linear",
                                                                                 "optim.lr_decay_start": 6}))
    rates = [learning_rate(late, 1.0, step) for step in range(10)]
    assert rates == pytest.approx([1, 1, 1, 1, 1, 1, 1.0, 0.75, 0.5, 0.25])


def test_a_longer_run_with_late_decay_passes_through_the_shorter_run(tmp_path):
    """infogan_mnist's first 4,000 steps are make demo's run: steps, decay after them and evaluations change
    nothing before."""
    demo, long_recipe = (load_recipe(RECIPES / name).to_dict() for name in ("dcgan_mnist.yaml", "infogan_mnist.yaml"))
    for tree in (demo, long_recipe):  # everything else is the same
        tree.pop("name")
        for key in ("steps", "eval_every", "eval_samples"):
            tree["train"].pop(key)
        for key in ("lr_decay", "lr_decay_start"):
            tree["optim"].pop(key)
    assert demo == long_recipe
    short = load_recipe(RECIPES / "dcgan_mnist.yaml", tiny_overrides(steps=4))
    long = load_recipe(RECIPES / "dcgan_mnist.yaml", tiny_overrides(steps=8, **{
        "optim.lr_decay": "linear", "optim.lr_decay_start": 4, "train.keep_checkpoints": 8}))
    train(short, tmp_path / "short", device="cpu", progress=False)
    train(long, tmp_path / "long", device="cpu", progress=False)
    a = load_checkpoint(tmp_path / "short" / "checkpoints" / "step-0000004.safetensors")
    b = load_checkpoint(tmp_path / "long" / "checkpoints" / "step-0000004.safetensors")
    for part in ("G", "D", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert not torch.equal(a["G"]["net.0.weight"], load_checkpoint(latest_checkpoint(tmp_path / "long"))["G"]["net.0.weight"])


def _weights(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir))


def test_resume_gives_the_same_weights_as_a_straight_run(tmp_path):
    overrides = tiny_overrides(steps=6, **{"train.checkpoint_every": 3})
    recipe = load_recipe(RECIPES / "cdcgan_mnist.yaml", overrides)
    train(recipe, tmp_path / "straight", device="cpu", progress=False)
    half = load_recipe(RECIPES / "cdcgan_mnist.yaml", overrides + ["train.steps=3"])
    train(half, tmp_path / "resumed", device="cpu", progress=False)
    # continue the run from the CLI, raising the step count, as a user would
    code, output = cli("train", "--resume", str(tmp_path / "resumed"), "train.steps=6", "--no-progress")
    assert code == 0, output
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a["step"] == b["step"] == 6
    for key in ("G", "D", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert torch.equal(a["opt_d"]["state"][0]["exp_avg_sq"], b["opt_d"]["state"][0]["exp_avg_sq"])
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_run_killed_at_any_moment_resumes_from_its_last_good_checkpoint(tmp_path):
    """SIGKILL a real training process while it checkpoints every step; whatever moment the kill lands on, the
    newest checkpoint loads and the run resumes from it."""
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "gandeploy", "train", str(RECIPES / "dcgan_mnist.yaml"),
            *tiny_overrides(steps=10_000, **{"train.checkpoint_every": 1, "train.keep_checkpoints": 2}),
            "--out", str(run_dir), "--no-progress", "--device", "cpu"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while len(list_checkpoints(run_dir)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.37)  # land somewhere inside a later step or checkpoint write
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    good = latest_checkpoint(run_dir)
    state = load_checkpoint(good)
    assert state["step"] >= 2
    load_generator(run_dir)  # the generator folder is whole too
    # a kill mid-write may leave a temporary file, never a damaged checkpoint: every published file loads
    published = [p for p in (run_dir / "checkpoints").iterdir() if not p.name.startswith(".tmp-")]
    assert published and all(load_checkpoint(p)["step"] >= 1 for p in published)
    code, output = cli("train", "--resume", str(run_dir), f"train.steps={state['step'] + 2}", "--no-progress")
    assert code == 0, output
    assert load_checkpoint(latest_checkpoint(run_dir))["step"] == state["step"] + 2


def test_ema_arithmetic():
    r = load_recipe(RECIPES / "dcgan_mnist.yaml", ["train.batch_size=64", "train.ema_kimg=10", "train.ema_rampup=0.05"])
    # ramp-up: after 6,400 images the half-life is 320 images, i.e. 5 batches of 64
    assert math.isclose(ema_beta(r, 6400), 0.5 ** (64 / 320))
    # past the ramp-up the half-life is 10,000 images
    assert math.isclose(ema_beta(r, 10**7), 0.5 ** (64 / 10000))
    no_ramp = load_recipe(RECIPES / "dcgan_mnist.yaml", ["train.ema_rampup=null", "train.ema_kimg=1"])
    assert math.isclose(ema_beta(no_ramp, 64), 0.5 ** (64 / 1000))
    ema, model = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.running_mean.fill_(7.0)
    ema_update(ema, model, beta=0.25)
    assert torch.allclose(ema.weight, torch.full((2,), 0.25 * 1.0 + 0.75 * 3.0))
    assert torch.equal(ema.running_mean, model.running_mean)  # buffers are copied, not averaged


def test_standing_statistics_are_the_generators_own_batch_statistics():
    from gandeploy.nets import build_generator

    torch.manual_seed(0)
    G = build_generator({"family": "dcgan", "latent_dim": 8, "resolution": 28, "channels": 1, "width": 4,
                         "num_classes": 0, "embed_dim": 4})
    standing = standing_statistics(G, batches_=3, batch_size=32, device=torch.device("cpu"), seed=5)
    assert not standing.training and G.training  # the original is untouched
    rng = torch.Generator().manual_seed(5)
    zs = [torch.randn(32, 8, generator=rng) for _ in range(3)]
    first_bn = G.net[1]
    means = [G.net[0](z[:, :, None, None]).mean(dim=(0, 2, 3)) for z in zs]
    torch.testing.assert_close(standing.net[1].running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(first_bn.running_mean, standing.net[1].running_mean)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_module("train", str(RECIPES / "dcgan_mnist.yaml"),
                      *tiny_overrides(steps=50, **{"train.checkpoint_every": 1,
                                                   "optim.g_lr": 1e30}),
                      "--out", str(run_dir), "--no-progress")
    assert proc.returncode == 1, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("stopped: loss became non-finite at step ")
    step = int(message.split("at step ")[1].split()[0])
    kept = latest_checkpoint(run_dir)
    assert kept is not None and f"{kept} is kept" in message
    state = load_checkpoint(kept)
    assert state["step"] == step - 1
    assert all(torch.isfinite(t).all() for t in state["G"].values() if t.is_floating_point())


def test_sample_command_writes_a_grid(tiny_run, tiny_conditional_run, tmp_path):
    code, output = cli("sample", str(tiny_run), "--n", "10", "--seed", "3", "--out", str(tmp_path / "g.png"),
                       "--scale", "1")
    assert code == 0, output
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape == (3 * 30 + 2, 4 * 30 + 2)  # 10 digits of 28 px: 3 rows of 4, 2 px gaps
    code, output = cli("sample", str(tiny_conditional_run), "--n", "4", "--labels", "3",
                       "--out", str(tmp_path / "c.png"))
    assert code == 0, output
    code, output = cli("sample", str(tiny_conditional_run), "--labels", "12", "--out", str(tmp_path / "x.png"))
    assert code == 2 and "--labels: label 12 is out of range; this generator has classes 0..9" in output
    code, output = cli("sample", str(tmp_path / "nothing"))
    assert code == 2 and output.startswith("error: ")


def test_train_refuses_to_overwrite_and_numbers_new_runs(tmp_path, tiny_run):
    code, output = cli("train", str(RECIPES / "dcgan_mnist.yaml"), "--out", str(tiny_run))
    assert code == 2 and "already exists and is not empty" in output and "--resume" in output
    code, output = cli("train", "--resume", str(tmp_path))
    assert code == 2 and "no recipe.yaml there" in output
    code, output = cli("train", str(RECIPES / "wgan_gp_mnist.yaml"), "--resume", str(tiny_run))
    assert code == 2 and "name is 'dcgan_mnist' in the run but 'wgan_gp_mnist' now" in output
    code, output = cli("train", "--resume", str(tiny_run), "model.g_width=128")
    assert code == 2 and "model.g_width is 8 in the run but 128 now" in output and "start a new run" in output
    (tmp_path / "runs" / "x").mkdir(parents=True)
    assert new_run_dir(tmp_path / "runs", "x") == tmp_path / "runs" / "x"  # an empty folder is free
    (tmp_path / "runs" / "x" / "log.jsonl").write_text("")
    assert new_run_dir(tmp_path / "runs", "x") == tmp_path / "runs" / "x-2"


def test_generator_folder_holds_eval_ready_ema_weights(tiny_run):
    """generator/ is the EMA with standing statistics: its eval-mode output stays in range and differs from the
    raw G of the checkpoint."""
    G, _ = load_generator(tiny_run)
    state = load_checkpoint(latest_checkpoint(tiny_run))
    saved = load_file(str(tiny_run / "generator" / "model.safetensors"))
    name = "net.0.weight"
    assert torch.equal(saved[name], state["ema"][name])
    assert not torch.equal(saved[name], state["G"][name])
    assert not torch.equal(saved["net.1.running_mean"], state["ema"]["net.1.running_mean"])


def test_two_process_ddp_step_on_gloo(tmp_path):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "gandeploy", "train", str(RECIPES / "dcgan_mnist.yaml"), *tiny_overrides(steps=2),
         "--out", str(run_dir), "--no-progress", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["G"].values() if t.is_floating_point())


def test_sample_takes_the_latest_run_when_given_no_path(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, output = cli("sample")
    assert code == 2 and "no trained run under runs/" in output
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(tiny_run)
    code, output = cli("sample", "--n", "4")
    assert code == 0 and "runs/tiny" in output and (tmp_path / "grid.png").is_file()


def test_info_lists_versions_and_backends():
    code, output = cli("info")
    assert code == 0
    assert f"torch: {torch.__version__}" in output
    for module in ("onnxruntime", "tensorrt", "torchvision"):
        assert f"{module}: " in output  # a version, or "not available (reason)"
    for backend in ("torch", "onnxruntime", "tensorrt"):
        assert f"backend {backend}: runs on" in output


def test_tensorboard_events_when_installed(tiny_run):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tiny_run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("g_loss")] == [1, 2, 3, 4]


def test_torchvision_source_fails_clearly_without_its_data(tmp_path):
    from gandeploy.data import load_data
    from gandeploy.errors import DataError
    from gandeploy.recipe import DataConfig

    with pytest.raises(DataError, match="torchvision"):  # not importable here, or no CIFAR10 under tmp_path
        load_data(DataConfig(source="torchvision", name="CIFAR10", path=str(tmp_path)))


def test_resume_skips_an_unreadable_checkpoint_and_takes_a_lower_learning_rate(tmp_path):
    run_dir = tmp_path / "run"
    train(load_recipe(RECIPES / "dcgan_mnist.yaml", tiny_overrides(steps=4)), run_dir, device="cpu", progress=False)
    newest = latest_checkpoint(run_dir)
    newest.write_bytes(newest.read_bytes()[:1000])  # damaged on disk after the fact
    proc = run_module("train", "--resume", str(run_dir), "train.steps=5", "optim.g_lr=1e-5", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "step-0000004.safetensors is unreadable" in proc.stderr and "resuming at step 2" in proc.stderr
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["step"] == 5 and state["opt_g"]["param_groups"][0]["lr"] == 1e-5
