"""Typed training recipes: YAML in, dataclasses out, every default defined here and nowhere else.

A recipe is a tree of sections (data, model, loss, optim, train). Values are checked against the field types
below; `KEY=VALUE` overrides are parsed as YAML scalars and checked the same way. Every error names the key path.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from .errors import RecipeError


def _range(lo=None, hi=None, lo_open=False):
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


@dataclass
class DataConfig:
    source: Literal["mnist", "folder", "npz", "torchvision"] = "mnist"  # mnist = the bundled 10,000 digits
    path: Optional[str] = None  # image folder, .npz file, or torchvision root
    name: Optional[str] = None  # torchvision data set class, e.g. CIFAR10 (source=torchvision only)
    resolution: int = 28  # images are centre-cropped and resized to resolution x resolution
    channels: Literal[1, 3] = 1  # 1 = grey, 3 = RGB
    conditional: bool = False  # train on class labels (npz `labels`, sub-folder names, MNIST digits)
    limit: Optional[int] = field(default=None, metadata=_range(1))  # use only the first N images
    workers: int = field(default=2, metadata=_range(0))  # loader processes for image folders


@dataclass
class ModelConfig:
    name: str = "dcgan"  # a family in gandeploy.nets (dcgan, infogan, mlp)
    latent_dim: int = field(default=100, metadata=_range(1))
    g_width: int = field(default=64, metadata=_range(1))  # generator channels at full resolution
    d_width: int = field(default=64, metadata=_range(1))  # discriminator channels after its first layer
    d_norm: Literal["batch", "layer", "instance", "none"] = "batch"
    spectral_norm: bool = False  # spectral normalisation of the discriminator's weights
    embed_dim: int = field(default=32, metadata=_range(1))  # label embedding size (conditional models)
    init: Literal["dcgan", "default"] = "dcgan"  # dcgan: weights ~ N(0, 0.02), BatchNorm gamma ~ N(1, 0.02)


@dataclass
class LossConfig:
    name: str = "ns"  # a loss in gandeploy.losses (ns, wgan, wgan-gp, hinge, lsgan)
    gp_weight: float = field(default=10.0, metadata=_range(0))  # lambda of the WGAN-GP gradient penalty
    clip: float = field(default=0.01, metadata=_range(0, lo_open=True))  # wgan: critic weights clipped to [-c, c]
    r1_gamma: float = field(default=0.0, metadata=_range(0))  # R1 penalty gamma/2 E|grad D(real)|^2 (0: off)
    label_smoothing: float = field(default=0.0, metadata=_range(0, 0.5))  # one-sided: real target 1 - s
    instance_noise: float = field(default=0.0, metadata=_range(0))  # std of noise added to D inputs at step 0
    instance_noise_steps: Optional[int] = field(default=None, metadata=_range(1))  # decays to 0; None = train.steps
    augment: str = ""  # DiffAugment of D's inputs, real and fake: comma-separated translation, cutout, color


@dataclass
class OptimConfig:
    g_lr: float = field(default=2e-4, metadata=_range(0, lo_open=True))
    d_lr: float = field(default=2e-4, metadata=_range(0, lo_open=True))
    betas: tuple[float, float] = (0.5, 0.999)
    d_steps: int = field(default=1, metadata=_range(1))  # discriminator (critic) steps per generator step
    name: Literal["adam", "rmsprop"] = "adam"  # rmsprop: the original WGAN's optimizer (betas unused)
    lr_decay: Literal["none", "linear"] = "none"  # linear: both rates fall linearly to 0 at train.steps ...
    lr_decay_start: int = field(default=0, metadata=_range(0))  # ... from this step on (constant before it)


@dataclass
class TrainConfig:
    steps: int = field(default=3000, metadata=_range(1))  # generator steps
    batch_size: int = field(default=64, metadata=_range(1))  # global batch, split across DDP processes
    seed: int = field(default=0, metadata=_range(0))
    ema: bool = True
    ema_kimg: float = field(default=10.0, metadata=_range(0, lo_open=True))  # EMA half-life, thousands of images
    ema_rampup: Optional[float] = field(default=0.05, metadata=_range(0, lo_open=True))  # half-life <= rampup * seen
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"  # auto: bf16 where the GPU or CPU has native bf16
    checkpoint_every: int = field(default=500, metadata=_range(1))
    keep_checkpoints: int = field(default=2, metadata=_range(1))
    log_every: int = field(default=50, metadata=_range(1))
    grid_size: int = field(default=64, metadata=_range(1, 1024))  # images in each sample grid
    standing_stats_batches: int = field(default=16, metadata=_range(0))  # BatchNorm statistics for the EMA G
    # FID (and KID) of the EMA generator at every eval_every steps (0: off), from eval_samples images against as many
    # of the training images; generator/ then holds the best by FID and generator-latest/ the latest
    eval_every: int = field(default=0, metadata=_range(0))
    eval_samples: int = field(default=2048, metadata=_range(2))


@dataclass
class Recipe:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


# ---- loading and checking ------------------------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe {path} not found; pass a YAML file such as recipes/dcgan_mnist.yaml")
    try:
        text = path.read_text()
        tree = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not UTF-8 text; is it a recipe? Recipes are YAML files") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}: not valid YAML{where} ({getattr(e, 'problem', e)}); fix the syntax") from None
    if tree is None:
        raise RecipeError(f"{path} is empty; a recipe names at least its data and model (see recipes/dcgan_mnist.yaml)")
    if not isinstance(tree, dict):
        raise RecipeError(f"{path}: expected a mapping of sections (name, data, model, ...), got {type(tree).__name__}")
    return recipe_from_dict(tree, overrides)


def recipe_from_dict(tree: dict, overrides: list[str] = ()) -> Recipe:
    tree = _plain(tree)
    for item in overrides:
        key, value = _parse_override(item)
        _set_path(tree, key, value)
    recipe = _build(Recipe, tree, "")
    check_recipe(recipe)
    return recipe


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {item!r} is not KEY=VALUE; write e.g. train.steps=200")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set_path(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"override {key}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls, tree, prefix: str):
    if not isinstance(tree, dict):
        raise RecipeError(f"{prefix.rstrip('.') or 'recipe'}: expected a mapping, got {tree!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in fields:
            raise RecipeError(f"unknown key {prefix}{key}{_suggest(str(key), fields, prefix)}")
    values = {}
    for name, f in fields.items():
        if name not in tree:
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, tree[name], f"{prefix}{name}.")
        else:
            values[name] = _coerce(tree[name], hint, f"{prefix}{name}")
            _check_range(values[name], f.metadata, f"{prefix}{name}")
    return cls(**values)


def _suggest(key: str, fields, prefix: str) -> str:
    near = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
    if near:
        return f" (did you mean {prefix}{near[0]}?)"
    return f"; valid keys here: {', '.join(prefix + k for k in fields)}"


def _coerce(value, hint, key: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise RecipeError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise RecipeError(f"{key}: expected a list of {len(args)} numbers like [0.5, 0.999], got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise RecipeError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"recipe schema: unsupported type {hint} for {key}")


def _check_range(value, meta, key: str) -> None:
    if value is None or not meta:
        return
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        bound = f"> {lo}" if meta.get("lo_open") else f">= {lo}"
        raise RecipeError(f"{key}: {value} is out of range; it must be {bound}")
    if hi is not None and value > hi:
        raise RecipeError(f"{key}: {value} is out of range; it must be <= {hi}")


def check_recipe(recipe: Recipe) -> None:
    """Checks that span several keys, and names that live in registries."""
    from .augment import parse_policy
    from .losses import LOSSES
    from .nets import FAMILIES

    from .formats.names import check_name

    if recipe.train.eval_every and recipe.train.eval_every % recipe.train.checkpoint_every:
        raise RecipeError(f"train.eval_every {recipe.train.eval_every}: evaluations happen at checkpoints; make it a "
                          f"multiple of train.checkpoint_every ({recipe.train.checkpoint_every})")
    if recipe.train.eval_every and recipe.data.source == "folder":
        raise RecipeError("train.eval_every: FID during training needs the data in memory (data.source mnist, npz or "
                          "torchvision); measure a folder run afterwards with `gandeploy fid RUN --real FOLDER`")

    check_name(recipe.name, "name: the run folder name", RecipeError)  # runs/<name>: never a path of its own
    if recipe.model.name not in FAMILIES:
        raise RecipeError(f"model.name: unknown model {recipe.model.name!r}; valid: {', '.join(FAMILIES)}")
    if recipe.loss.name not in LOSSES:
        raise RecipeError(f"loss.name: unknown loss {recipe.loss.name!r}; valid: {', '.join(LOSSES)}")
    sizes = getattr(FAMILIES[recipe.model.name], "RESOLUTIONS", None)  # None: any size (mlp)
    if sizes and recipe.data.resolution not in sizes:
        raise RecipeError(f"data.resolution: {recipe.model.name} builds {', '.join(map(str, sizes))} pixels, "
                          f"not {recipe.data.resolution}; pick one of those")
    if recipe.loss.name == "wgan-gp" and recipe.model.d_norm == "batch":
        # Gulrajani et al. 2017, sec. 4: the penalty is per sample, which BatchNorm in the critic breaks.
        raise RecipeError("model.d_norm: wgan-gp needs a critic without BatchNorm; set model.d_norm to layer, "
                          "instance or none")
    if recipe.optim.lr_decay != "none" and recipe.optim.lr_decay_start >= recipe.train.steps:
        raise RecipeError(f"optim.lr_decay_start: {recipe.optim.lr_decay_start} leaves no step to decay over; make "
                          f"it less than train.steps ({recipe.train.steps})")
    if recipe.loss.r1_gamma and recipe.model.d_norm == "batch":
        raise RecipeError("loss.r1_gamma: the R1 penalty is per real image, which BatchNorm in the discriminator "
                          "mixes; set model.d_norm to layer, instance or none")
    try:
        parse_policy(recipe.loss.augment)
    except ValueError as e:
        raise RecipeError(f"loss.augment: {e}") from None
    if recipe.loss.label_smoothing and recipe.loss.name not in ("ns", "lsgan"):
        raise RecipeError(f"loss.label_smoothing: only ns and lsgan have targets to smooth, "
                          f"not {recipe.loss.name}; set it to 0")
    if recipe.data.source in ("folder", "npz", "torchvision") and not recipe.data.path:
        raise RecipeError(f"data.path: data.source={recipe.data.source} needs data.path "
                          f"(the {'image folder' if recipe.data.source == 'folder' else 'file or root'})")
    if recipe.data.source == "torchvision" and not recipe.data.name:
        raise RecipeError("data.name: data.source=torchvision needs the data set class, e.g. data.name=CIFAR10")
    b1, b2 = recipe.optim.betas
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise RecipeError(f"optim.betas: {list(recipe.optim.betas)} is out of range; both must be in [0, 1)")
