import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gandeploy.cli import app

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
# Exports made beforehand (tests/make_exports.py): the torch-free tests then run in a serving install without torch
EXPORTS = os.environ.get("GANDEPLOY_TEST_EXPORTS")

try:  # torch is imported here only where it is installed: the serve-profile run has none
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
except ImportError:
    torch = None


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


def train_tiny(run_dir: Path, recipe: str, **extra) -> Path:
    from gandeploy.recipe import load_recipe
    from gandeploy.train import train

    train(load_recipe(RECIPES / recipe, tiny_overrides(**extra)), run_dir, device="cpu", progress=False)
    return run_dir


def _train_tiny(tmp_path_factory, recipe: str, name: str, **extra) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs") / name, recipe, **extra)


def make_exports(root: Path, run: Path, conditional_run: Path) -> dict:
    """The exports the runtime and serving tests share: uint8 and float output of `run`, and the conditional one."""
    from gandeploy.export import ExportOptions, export

    quiet = lambda _: None  # noqa: E731
    return {
        "uint8": export(run, root / "uint8", ExportOptions(max_batch=64, opt_batch=16), log=quiet),
        "float": export(run, root / "float", ExportOptions(output="float", max_batch=64, opt_batch=16), log=quiet),
        "cond": export(conditional_run, root / "cond", ExportOptions(max_batch=64, opt_batch=16), log=quiet),
    }


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A real (tiny) DCGAN run on the bundled digits, shared by tests that only read it."""
    return _train_tiny(tmp_path_factory, "dcgan_mnist.yaml", "tiny")


@pytest.fixture(scope="session")
def tiny_conditional_run(tmp_path_factory) -> Path:
    return _train_tiny(tmp_path_factory, "cdcgan_mnist.yaml", "tiny_cond")


@pytest.fixture(scope="session")
def exports(request, tmp_path_factory):
    """Exports of the tiny runs (uint8 and float output, and the conditional model), shared by runtime tests; the
    ones in GANDEPLOY_TEST_EXPORTS when set (copied: tests damage copies, never these)."""
    if EXPORTS:
        import shutil

        root = tmp_path_factory.mktemp("exports")
        return {k: Path(shutil.copytree(Path(EXPORTS) / k, root / k)) for k in ("uint8", "float", "cond")}
    return make_exports(tmp_path_factory.mktemp("exports"), request.getfixturevalue("tiny_run"),
                        request.getfixturevalue("tiny_conditional_run"))


@pytest.fixture(scope="session")
def fid_net():
    """The FID feature network on the CPU (the fastest exact path here); tests that need it skip without it."""
    from gandeploy.metrics import fid

    try:
        return fid.load_feature_net("cpu")
    except ValueError as e:
        pytest.skip(str(e))
