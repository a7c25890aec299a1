"""Generators as users write them, outside gandeploy: the PyTorch DCGAN tutorial's (its code, its names), a
class-conditional one taking (z, labels), an MLP with images in (0, 1), a 128x128 one, one made to overflow float16,
and two that torch.export cannot take as they are."""

import torch
from torch import nn


class TutorialGenerator(nn.Module):
    """pytorch.org/tutorials/beginner/dcgan_faces_tutorial.html, as written there (ngpu kept)."""

    def __init__(self, ngpu=1, nz=100, ngf=64, nc=3):
        super().__init__()
        self.ngpu = ngpu
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 8), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 4), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
            nn.ConvTranspose2d(ngf, nc, 4, 2, 1, bias=False), nn.Tanh())

    def forward(self, input):
        return self.main(input)


def small_tutorial():
    """What a user points --module at when the class needs arguments."""
    return TutorialGenerator(1, nz=16, ngf=8, nc=3)


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm running statistics away from their defaults, so folding them is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.ConvTranspose2d, nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.3 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return module.eval()


class ConditionalGenerator(nn.Module):
    """forward(z, labels): a label embedding concatenated to z, then a small transposed-conv stack (32x32)."""

    def __init__(self, nz=8, classes=5):
        super().__init__()
        self.embed = nn.Embedding(classes, 4)
        self.fc = nn.Linear(nz + 4, 16 * 4 * 4)
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                                nn.ConvTranspose2d(8, 8, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(8, 1, 4, 2, 1),
                                nn.Tanh())

    def forward(self, z, labels):
        h = self.fc(torch.cat([z, self.embed(labels)], dim=1)).view(-1, 16, 4, 4)
        return self.up(h)


class OneHotGenerator(nn.Module):
    """The usual conditional pattern: one_hot(labels).float() (an int64 -> float Cast in the graph), Sigmoid out."""

    def __init__(self, nz=8, classes=5):
        super().__init__()
        self.classes = classes
        self.fc = nn.Linear(nz + classes, 3 * 8 * 8)

    def forward(self, z, labels):
        c = nn.functional.one_hot(labels, self.classes).float()
        return torch.sigmoid(self.fc(torch.cat([z, c], dim=1))).view(-1, 3, 8, 8)


class MLPGenerator(nn.Module):
    """Images in (0, 1) through a sigmoid, 28x28 grey."""

    def __init__(self, nz=10):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(nz, 64), nn.LeakyReLU(0.2), nn.Linear(64, 28 * 28), nn.Sigmoid())

    def forward(self, z):
        return self.net(z).view(-1, 1, 28, 28)


class Large(nn.Module):
    """128x128 RGB from latents shaped (n, 8, 1, 1)."""

    def __init__(self, nz=8):
        super().__init__()
        layers, c = [nn.ConvTranspose2d(nz, 16, 4, 1, 0), nn.ReLU()], 16
        for _ in range(5):  # 4 -> 128
            layers += [nn.ConvTranspose2d(c, 8, 4, 2, 1), nn.BatchNorm2d(8), nn.ReLU()]
            c = 8
        layers += [nn.Conv2d(8, 3, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z)


class Overflowing(nn.Module):
    """One layer's activations reach ~1e5, beyond float16's 65504, and are scaled back down before the output:
    fine in float32; in float16 arithmetic they become inf, and cos(inf) is NaN."""

    def __init__(self, nz=8):
        super().__init__()
        self.fc = nn.Linear(nz, 3 * 16 * 16)
        with torch.no_grad():  # every value seeded: the process's default seed differs from run to run
            g = torch.Generator().manual_seed(1)
            self.fc.weight.normal_(0, 1.0, generator=g)
            self.fc.bias.uniform_(-0.3, 0.3, generator=g)

    def forward(self, z):
        h = torch.relu(self.fc(z) * 40000.0)  # up to ~1e5 and more
        return torch.cos(h / 40000.0).view(-1, 3, 16, 16)


class Noisy(nn.Module):
    """Draws noise inside forward: an export would bake it into the graph."""

    def __init__(self, nz=8):
        super().__init__()
        self.fc = nn.Linear(nz, 3 * 8 * 8)

    def forward(self, z):
        return torch.tanh(self.fc(z + torch.randn_like(z))).view(-1, 3, 8, 8)


class Branchy(nn.Module):
    """Branches on tensor values: data-dependent control flow."""

    def __init__(self, nz=8):
        super().__init__()
        self.fc = nn.Linear(nz, 3 * 8 * 8)

    def forward(self, z):
        if z.sum() > 0:
            z = -z
        return torch.tanh(self.fc(z)).view(-1, 3, 8, 8)


class ModulatedConv(nn.Module):
    """StyleGAN2's modulated convolution as lucidrains' stylegan2-pytorch writes it: per-sample weights, the batch
    folded into channels, one conv with groups=batch."""

    def __init__(self, cin, cout, k=3, demod=True):
        super().__init__()
        self.cout, self.k, self.demod = cout, k, demod
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))

    def forward(self, x, styles):
        b, _, h, w = x.shape
        weights = self.weight[None] * (styles[:, None, :, None, None] + 1)
        if self.demod:
            weights = weights * torch.rsqrt((weights ** 2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        x = nn.functional.conv2d(x.reshape(1, -1, h, w), weights.reshape(b * self.cout, *weights.shape[2:]),
                                 padding=(self.k - 1) // 2, groups=b)
        return x.reshape(b, self.cout, h, w)


class ModulatedGenerator(nn.Module):
    """Two modulated convs (groups=batch) between nearest upsamplings, 16x16 RGB."""

    def __init__(self, nz=8):
        super().__init__()
        self.fc = nn.Linear(nz, 8 * 4 * 4)
        self.style1, self.conv1 = nn.Linear(nz, 8), ModulatedConv(8, 8)
        self.style2, self.conv2 = nn.Linear(nz, 8), ModulatedConv(8, 3, 1, demod=False)

    def forward(self, z):
        x = nn.functional.interpolate(self.fc(z).view(-1, 8, 4, 4), scale_factor=2)
        x = nn.functional.leaky_relu(self.conv1(x, self.style1(z)), 0.2)
        x = nn.functional.interpolate(x, scale_factor=2)
        return torch.tanh(self.conv2(x, self.style2(z)) * 0.3)


class ModulatedUpGenerator(nn.Module):
    """NVIDIA's fused modconv with upsampling: a transposed conv with groups=batch (stride 2), 8x8 RGB."""

    def __init__(self, nz=8):
        super().__init__()
        self.fc, self.style = nn.Linear(nz, 8 * 4 * 4), nn.Linear(nz, 8)
        self.weight = nn.Parameter(torch.randn(3, 8, 3, 3))

    def forward(self, z):
        b = z.shape[0]
        w = (self.weight[None] * self.style(z)[:, None, :, None, None]).transpose(1, 2).reshape(b * 8, 3, 3, 3)
        x = nn.functional.conv_transpose2d(self.fc(z).view(1, b * 8, 4, 4), w, stride=2, padding=1,
                                           output_padding=1, groups=b)
        return torch.tanh(x.reshape(b, 3, 8, 8) * 0.3)


class Modulated1d(nn.Module):
    """A 1-D conv with groups=batch: not rewritten, refused in one line naming it."""

    def __init__(self, nz=8):
        super().__init__()
        self.fc = nn.Linear(nz, 4 * 12)
        self.weight = nn.Parameter(torch.randn(4, 4, 3))

    def forward(self, z):
        b = z.shape[0]
        w = (self.weight[None] * z[:, :4, None, None]).reshape(b * 4, 4, 3)
        x = nn.functional.conv1d(self.fc(z).view(1, b * 4, 12), w, padding=1, groups=b)
        return torch.tanh(x).view(b, 3, 4, 4)


class InnerTanh(nn.Module):
    """A Tanh inside the network (a gate) and a linear output: FP16 must not key off that Tanh."""

    def __init__(self, nz=8):
        super().__init__()
        self.fc = nn.Linear(nz, 16 * 4 * 4)
        self.up = nn.Sequential(nn.ConvTranspose2d(16, 16, 4, 2, 1), nn.Tanh(), nn.ConvTranspose2d(16, 16, 4, 2, 1),
                                nn.LeakyReLU(0.2), nn.Conv2d(16, 3, 3, 1, 1))

    def forward(self, z):
        return self.up(self.fc(z).view(-1, 16, 4, 4)).clamp(-1, 1)


class WithModulated1d(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Modulated1d()

    def forward(self, z):
        return self.block(z)


class ModulatedThenConv(nn.Module):
    """Modulated convs grouped by the batch, then an ordinary conv: only the former are rewritten."""

    def __init__(self, nz=8):
        super().__init__()
        self.modulated, self.conv = ModulatedGenerator(nz), nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, z):
        return torch.tanh(self.conv(self.modulated(z)))
