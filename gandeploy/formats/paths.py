"""What commands take when given no path: the newest run or export. No training code is imported here."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def latest_run(root: str | Path = "runs") -> Path:
    """The run under `root` whose generator was written last."""
    found = sorted(Path(root).glob("*/generator/config.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no trained run under {root}/; train one with `gandeploy train recipes/dcgan_mnist.yaml` "
                        f"or pass a run folder")
    return found[-1].parent.parent


def latest_export(root: str | Path = "exports") -> Path:
    """The export under `root` written last."""
    found = sorted(Path(root).glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"no export under {root}/; make one with `gandeploy export` or pass an export folder")
    return found[-1].parent
