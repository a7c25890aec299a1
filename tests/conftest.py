import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gandeploy.cli import app
from gandeploy.recipe import load_recipe
from gandeploy.train import train

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_overrides(steps: int = 4, **extra) -> list[str]:
    """A seconds-long version of a recipe: small nets, few images, few steps."""
    base = {"model.latent_dim": 16, "model.g_width": 8, "model.d_width": 8, "data.limit": 256,
            "train.steps": steps, "train.batch_size": 16, "train.checkpoint_every": 2, "train.log_every": 1,
            "train.grid_size": 16, "train.standing_stats_batches": 2}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def cli(*args: str):
    """Run the CLI in this process; returns (exit code, combined output)."""
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def run_module(*args: str, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gandeploy", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout)


def _train_tiny(tmp_path_factory, recipe: str, name: str, **extra) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / name
    train(load_recipe(RECIPES / recipe, tiny_overrides(**extra)), run_dir, device="cpu", progress=False)
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A real (tiny) DCGAN run on the bundled digits, shared by tests that only read it."""
    return _train_tiny(tmp_path_factory, "dcgan_mnist.yaml", "tiny")


@pytest.fixture(scope="session")
def tiny_conditional_run(tmp_path_factory) -> Path:
    return _train_tiny(tmp_path_factory, "cdcgan_mnist.yaml", "tiny_cond")


@pytest.fixture(scope="session")
def exports(tiny_run, tiny_conditional_run, tmp_path_factory):
    """Exports of the tiny runs (uint8 and float output, and the conditional model), shared by runtime tests."""
    from gandeploy.export import ExportOptions, export

    root = tmp_path_factory.mktemp("exports")
    quiet = lambda _: None  # noqa: E731
    return {
        "uint8": export(tiny_run, root / "uint8", ExportOptions(max_batch=64, opt_batch=16), log=quiet),
        "float": export(tiny_run, root / "float", ExportOptions(output="float", max_batch=64, opt_batch=16), log=quiet),
        "cond": export(tiny_conditional_run, root / "cond", ExportOptions(max_batch=64, opt_batch=16), log=quiet),
    }


@pytest.fixture(scope="session")
def fid_net():
    """The FID feature network on the CPU (the fastest exact path here); tests that need it skip without it."""
    from gandeploy.metrics import fid

    try:
        return fid.load_feature_net("cpu")
    except ValueError as e:
        pytest.skip(str(e))
