"""StyleGAN2 and StyleGAN3 generators written for export, loading NVIDIA's weights by name.

`sg2.Generator` and `sg3.Generator` take the init arguments of NVIDIA's classes (stylegan2-ada-pytorch
`training.networks.Generator`, stylegan3 `training.networks_stylegan2.Generator` and
`training.networks_stylegan3.Generator`) and have the same state_dict keys, so a network captured from a pickle
loads with `load_state_dict(strict=True)`. `StyleGAN` wraps one in gandeploy's generator contract:
`(z, labels) -> images`, with truncation and the noise mode fixed at export.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NOISE_MODES = ("const", "none")


CLASSES = {"training.networks.Generator": "stylegan2",  # stylegan2-ada-pytorch
           "training.networks_stylegan2.Generator": "stylegan2",  # stylegan3's StyleGAN2
           "training.networks_stylegan3.Generator": "stylegan3"}


def nvidia_class(classes: dict[str, str], init_kwargs: dict) -> str | None:
    """Which of NVIDIA's generator classes a captured network is, from its submodules' class names (path -> name)
    and the layout of its init arguments; None if it is none of them. A pickle records class names without their
    module, so the module is told by the data: stylegan2-ada-pytorch passes `synthesis_kwargs` as one dict,
    stylegan3's networks_stylegan2 as separate keywords (with other defaults: conv_clamp 256)."""
    names = set(classes.values())
    if classes.get("") != "Generator" or "SynthesisNetwork" not in names:
        return None
    if "SynthesisInput" in names:
        return "training.networks_stylegan3.Generator"
    if "SynthesisBlock" not in names:
        return None
    return "training.networks.Generator" if "synthesis_kwargs" in init_kwargs else \
        "training.networks_stylegan2.Generator"


def build(class_name: str, init_args, init_kwargs: dict) -> nn.Module:
    """NVIDIA's generator `class_name` re-implemented for export, built from the arguments it was made with."""
    if CLASSES.get(class_name) == "stylegan2":
        from .sg2 import Generator

        return Generator.from_nvidia(class_name, init_kwargs, init_args)
    if CLASSES.get(class_name) == "stylegan3":
        from .sg3 import Generator

        return Generator(*init_args, **init_kwargs)
    raise ValueError(f"not one of NVIDIA's generator classes: {class_name!r}")


class StyleGAN(nn.Module):
    """z (n, z_dim) [+ int64 labels (n,)] -> images (n, c, h, w) in [-1, 1].

    Labels become NVIDIA's one-hot `c` by a row lookup in an identity matrix (a Gather, not an int -> float Cast,
    which FP16 converters mistype). Truncation psi/cutoff and the noise mode are fixed when the graph is built."""

    def __init__(self, generator: nn.Module, psi: float = 1.0, cutoff: int | None = None, noise_mode: str = "const"):
        super().__init__()
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise mode {noise_mode!r}: exports take {' or '.join(NOISE_MODES)}")
        self.G, self.psi, self.cutoff, self.noise_mode = generator, float(psi), cutoff, noise_mode
        self.c_dim = int(generator.c_dim)
        self.register_buffer("one_hot", torch.eye(max(self.c_dim, 1)), persistent=False)

    def float32_scopes(self) -> list[str]:
        """Module paths (below this one) that the FP16 export keeps in float32."""
        return [f"G.{scope}" for scope in float32_scopes(self.G)]

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        c = self.one_hot[labels] if self.c_dim else None  # (n, c_dim)
        return self.G(z, c, truncation_psi=self.psi, truncation_cutoff=self.cutoff, noise_mode=self.noise_mode)


def float32_scopes(generator: nn.Module) -> list[str]:
    """The submodules NVIDIA's own mixed precision keeps in float32 (the mapping network, and the synthesis layers
    below the `num_fp16_res` highest resolutions): the FP16 export keeps them in float32 too."""
    synthesis = generator.synthesis
    scopes = ["mapping"]
    if hasattr(synthesis, "block_resolutions"):  # StyleGAN2: blocks b4 ... b{res}
        fp16_resolution = max(2 ** (int(math.log2(synthesis.img_resolution)) + 1 - synthesis.num_fp16_res), 8)
        scopes += [f"synthesis.b{res}" for res in synthesis.block_resolutions if res < fp16_resolution]
    else:  # StyleGAN3: the Fourier input and each layer's own flag
        scopes += ["synthesis.input"] + [f"synthesis.{name}" for name in synthesis.layer_names
                                         if not getattr(synthesis, name).use_fp16]
    return scopes


def from_config(config: dict) -> StyleGAN:
    """The wrapper a generator folder's config.json describes (its `stylegan` entry); weights loaded by the caller."""
    spec = config["stylegan"]
    args, kwargs, psi, cutoff = spec.get("init_args", []), spec["init_kwargs"], spec["psi"], spec.get("cutoff")
    if not isinstance(args, list) or not isinstance(kwargs, dict) or isinstance(psi, bool) or \
            not isinstance(psi, (int, float)) or not math.isfinite(psi) or \
            not (cutoff is None or (isinstance(cutoff, int) and not isinstance(cutoff, bool) and cutoff >= 0)):
        raise ValueError("stylegan: init_args must be a list, init_kwargs an object, psi a finite number and cutoff "
                         "null or an integer >= 0")
    return StyleGAN(build(spec["class"], args, kwargs), psi, cutoff, spec["noise_mode"])
