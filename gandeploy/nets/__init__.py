"""Generator and discriminator families, registered by name.

Every generator takes `(z, labels=None)` with z of shape (n, latent_dim) and returns (n, channels, res, res) in
[-1, 1]. Every discriminator takes `(images, labels=None)` and returns logits of shape (n,).
"""

from __future__ import annotations

from torch import nn

from . import dcgan, infogan, mlp
from .layers import dcgan_init  # noqa: F401  (re-exported)

FAMILIES = {"dcgan": dcgan, "infogan": infogan, "mlp": mlp}
RESOLUTIONS = dcgan.RESOLUTIONS
# generators that are exported, not trained here: NVIDIA's networks read from their pickles (nets/stylegan)
FOREIGN = ("stylegan2", "stylegan3")
GENERATORS = (*FAMILIES, *FOREIGN)


def build_generator(config: dict) -> nn.Module:
    """Build a generator from its config.json dictionary (see `generator_config`)."""
    if config["family"] in FOREIGN:
        from . import stylegan

        return stylegan.from_config(config)
    family = FAMILIES[config["family"]]
    return family.Generator(latent_dim=config["latent_dim"], resolution=config["resolution"],
                            channels=config["channels"], width=config["width"],
                            num_classes=config["num_classes"], embed_dim=config["embed_dim"])


def build_discriminator(model, resolution: int, channels: int, num_classes: int) -> nn.Module:
    family = FAMILIES[model.name]
    return family.Discriminator(resolution=resolution, channels=channels, width=model.d_width,
                                num_classes=num_classes, embed_dim=model.embed_dim, norm=model.d_norm,
                                spectral_norm=model.spectral_norm)
