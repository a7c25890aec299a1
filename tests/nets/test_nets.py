import pytest
import torch

from gandeploy.nets import FAMILIES, RESOLUTIONS, build_discriminator, build_generator, dcgan_init
from gandeploy.recipe import ModelConfig

SIZES = [(family, res) for family, module in FAMILIES.items() for res in getattr(module, "RESOLUTIONS", RESOLUTIONS)]


@pytest.mark.parametrize("family, resolution", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_output_shapes(family, resolution, channels, num_classes):
    torch.manual_seed(0)
    config = {"family": family, "latent_dim": 12, "resolution": resolution, "channels": channels, "width": 4,
              "num_classes": num_classes, "embed_dim": 5}
    G = build_generator(config)
    D = build_discriminator(ModelConfig(name=family, d_width=4, d_norm="layer"), resolution, channels, num_classes)
    z = torch.randn(3, 12)
    labels = torch.tensor([0, 4, 9]) if num_classes else None
    images = G(z, labels)
    assert images.shape == (3, channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1  # tanh range, the value_range in config.json
    logits = D(images, labels)
    assert logits.shape == (3,) and torch.isfinite(logits).all()


def test_dcgan_paper_sizes():
    """64x64 with width 64 is the DCGAN paper's generator: 1024 -> 512 -> 256 -> 128 -> 3 channels, but with
    width meaning full-resolution channels the first map is width * 8 = 512 channels at 4x4."""
    G = build_generator({"family": "dcgan", "latent_dim": 100, "resolution": 64, "channels": 3, "width": 64,
                         "num_classes": 0, "embed_dim": 32})
    first = G.net[0]
    assert (first.in_channels, first.out_channels, first.kernel_size) == (100, 512, (4, 4))


def test_infogan_has_the_papers_mnist_sizes():
    """Chen et al. 2016, app. C.1 (the nets of Lucic et al.'s MNIST study): G is FC 1024 -> FC 7x7x128 -> 64
    channels at 14x14 -> 1 at 28x28; D is 64 -> 128 channels -> FC 1024 -> 1."""
    G = build_generator({"family": "infogan", "latent_dim": 64, "resolution": 28, "channels": 1, "width": 64,
                         "num_classes": 0, "embed_dim": 32})
    linears = [m for m in G.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 1024), (1024, 7 * 7 * 128)]
    D = build_discriminator(ModelConfig(name="infogan", d_width=64), 28, 1, 0)
    convs = [m.out_channels for m in D.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [(m.in_features, m.out_features) for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert convs == [64, 128] and linears == [(7 * 7 * 128, 1024), (1024, 1)]


def test_conditional_generator_uses_the_label():
    torch.manual_seed(0)
    G = build_generator({"family": "dcgan", "latent_dim": 8, "resolution": 28, "channels": 1, "width": 4,
                         "num_classes": 10, "embed_dim": 4}).eval()
    z = torch.randn(1, 8).repeat(2, 1)
    out = G(z, torch.tensor([1, 7]))
    assert not torch.allclose(out[0], out[1])


def test_dcgan_init_and_spectral_norm():
    torch.manual_seed(0)
    D = build_discriminator(ModelConfig(d_width=16, d_norm="none", spectral_norm=True), 64, 3, 0)
    dcgan_init(D)
    weight = D.features[0].parametrizations.weight.original
    assert abs(weight.std().item() - 0.02) < 0.003
    # spectral norm: the effective weight's largest singular value is ~1 after a few power iterations
    D.train()
    for _ in range(20):
        D(torch.randn(2, 3, 64, 64))
    w = D.features[2].weight.flatten(1)
    assert abs(torch.linalg.matrix_norm(w, ord=2).item() - 1.0) < 0.05
