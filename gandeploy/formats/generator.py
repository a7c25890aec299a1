"""The generator spec: a generator folder's config.json (what to build, what it takes and gives), readable without
torch so the runtime can describe a generator it does not run."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArtifactError

GENERATOR_FORMAT = 1
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def generator_dir(path: str | Path) -> Path:
    """Accept a run folder or a generator folder; return the generator folder."""
    path = Path(path)
    return path / "generator" if (path / "generator").is_dir() else path


def read_config(folder: str | Path) -> dict:
    """config.json of a generator folder, checked for the format this gandeploy reads."""
    cfg_file = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{cfg_file} is not valid JSON ({e}); the run's last checkpoint can rewrite it") from None
    if not isinstance(config, dict):
        raise ArtifactError(f"{cfg_file} holds a {type(config).__name__}, not a JSON object; re-save the generator")
    version = config.get("format_version")
    if version != GENERATOR_FORMAT:
        raise ArtifactError(f"{cfg_file} has format_version {version!r}; this gandeploy reads "
                            f"{GENERATOR_FORMAT}: upgrade gandeploy or re-save the generator with this version")
    from .validate import check_generator_spec

    return check_generator_spec(config, str(cfg_file))
