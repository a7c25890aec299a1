"""Pieces shared by our StyleGAN2 and StyleGAN3 generators, written for export.

Everything here is built from ordinary tensor ops (pad, reshape, conv2d with groups, slicing, matmul) so that the
graph exports to ONNX with a dynamic batch axis and runs on ONNX Runtime and TensorRT without custom plugins. The
parameter and buffer names follow NVIDIA's StyleGAN2-ADA / StyleGAN3 code (Karras et al. 2020, arXiv:2006.06676;
Karras et al. 2021, arXiv:2106.12423), so their state_dicts load with `strict=True`; the arithmetic follows theirs
closely enough that float32 results agree to rounding.

Contents:
- `setup_filter`, `upfirdn2d`, `upsample2d`, `downsample2d`, `filter2d`: FIR resampling (zero insertion by reshape+pad,
  pad/crop, a depthwise conv with a fixed filter, strided slicing for downsampling).
- `bias_act`: bias, activation, gain, optional clamp.
- `normalize_2nd_moment`, `FullyConnectedLayer`, `MappingNetwork`: the z -> w mapping with truncation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------------------------------------------------------------
# Bias + activation


# name -> (function of (x, alpha), default alpha, default gain). The gains keep the output's second moment near 1 for
# unit-variance input (He et al.); NVIDIA's networks rely on these exact defaults, so they are part of the format.
_ACTIVATIONS = {
    "linear": (lambda x, alpha: x, 0.0, 1.0),
    "relu": (lambda x, alpha: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": (lambda x, alpha: F.leaky_relu(x, alpha), 0.2, math.sqrt(2)),
    "tanh": (lambda x, alpha: torch.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, alpha: torch.sigmoid(x), 0.0, 1.0),
    "elu": (lambda x, alpha: F.elu(x), 0.0, 1.0),
    "selu": (lambda x, alpha: F.selu(x), 0.0, 1.0),
    "softplus": (lambda x, alpha: F.softplus(x), 0.0, 1.0),
    "swish": (lambda x, alpha: torch.sigmoid(x) * x, 0.0, math.sqrt(2)),
}


def activation_gain(act: str) -> float:
    """The default output gain of an activation (sqrt(2) for relu/lrelu/swish, else 1)."""
    return _ACTIVATIONS[act][2]


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, act: str = "linear", alpha: float | None = None,
             gain: float | None = None, clamp: float | None = None, dim: int = 1) -> torch.Tensor:
    """x + b (b along `dim`), then the activation, then * gain, then clamp to [-clamp, clamp] when clamp is given.

    `gain=None` means the activation's default gain (see `activation_gain`), `alpha=None` its default slope.
    """
    func, default_alpha, default_gain = _ACTIVATIONS[act]
    alpha = float(default_alpha if alpha is None else alpha)
    gain = float(default_gain if gain is None else gain)
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.reshape(shape)
    x = func(x, alpha)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:  # a clamp after the gain bounds what fp16 layers would see
        x = x.clamp(-float(clamp), float(clamp))
    return x


# ---------------------------------------------------------------------------------------------------------------------
# FIR filtering and resampling


def setup_filter(f=None, normalize: bool = True, flip_filter: bool = False, gain: float = 1,
                 separable: bool | None = None) -> torch.Tensor:
    """Turn a list of taps into the float32 filter tensor the resampling helpers take.

    A 1-D list becomes its outer product (a 2-D filter) unless it is long (8+ taps) or `separable=True`, in which
    case it stays 1-D and is applied along each axis in turn. `normalize` makes the taps sum to 1 (DC gain 1).
    These values end up in the state_dict as `resample_filter` buffers, so they must equal NVIDIA's.
    """
    f = torch.as_tensor(1.0 if f is None else f, dtype=torch.float32)
    if f.ndim == 0:
        f = f.reshape(1)
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if normalize:
        f = f / f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    return f * (gain ** (f.ndim / 2))


def _pair(v) -> tuple[int, int]:
    """An int or (x, y) pair -> (x, y)."""
    if isinstance(v, int):
        return v, v
    vx, vy = v
    return int(vx), int(vy)


def parse_padding(padding) -> tuple[int, int, int, int]:
    """int, (x, y) or (x0, x1, y0, y1) -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        px, py = padding
        return px, px, py, py
    px0, px1, py0, py1 = padding
    return int(px0), int(px1), int(py0), int(py1)


def filter_size(f: torch.Tensor | None) -> tuple[int, int]:
    """(width, height) of a filter tensor; a 1-D filter is square."""
    if f is None:
        return 1, 1
    return int(f.shape[-1]), int(f.shape[0])


def zero_upsample(x: torch.Tensor, upx: int, upy: int) -> torch.Tensor:
    """Insert upx-1 / upy-1 zeros after every pixel: (n, c, h, w) -> (n, c, h*upy, w*upx)."""
    if upx == 1 and upy == 1:
        return x
    _, c, h, w = x.shape
    x = x.reshape(-1, c, h, 1, w, 1)  # batch as -1 keeps it dynamic in the exported graph
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])  # (n, c, h, upy, w, upx), the real pixel first
    return x.reshape(-1, c, h * upy, w * upx)


def pad_or_crop(x: torch.Tensor, px0: int, px1: int, py0: int, py1: int) -> torch.Tensor:
    """Zero-pad each side by a positive amount, crop it by a negative one."""
    if max(px0, px1, py0, py1) > 0:
        x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    if min(px0, px1, py0, py1) < 0:
        h, w = x.shape[2], x.shape[3]
        x = x[:, :, max(-py0, 0): h - max(-py1, 0), max(-px0, 0): w - max(-px1, 0)]
    return x


def fir_conv(x: torch.Tensor, f: torch.Tensor, flip_filter: bool = False, gain: float = 1) -> torch.Tensor:
    """Convolve every channel with the same fixed filter, without padding (the output shrinks).

    A depthwise conv2d (groups = channels) whose weight is the filter repeated per channel. `flip_filter=False` is a
    true convolution, so the taps are flipped first because conv2d correlates.
    """
    c = x.shape[1]
    f = f * (gain ** (f.ndim / 2))  # a 1-D filter runs twice, so each pass takes the square root of the gain
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].repeat(c, 1, 1, 1)  # (c, 1, fh, fw)
        return F.conv2d(x, weight, groups=c)
    weight = f[None, None].repeat(c, 1, 1)  # (c, 1, taps)
    x = F.conv2d(x, weight.unsqueeze(2), groups=c)  # along the width
    return F.conv2d(x, weight.unsqueeze(3), groups=c)  # along the height


def upfirdn2d(x: torch.Tensor, f: torch.Tensor | None, up=1, down=1, padding=0, flip_filter: bool = False,
              gain: float = 1) -> torch.Tensor:
    """Upsample by zero insertion, pad (or crop), FIR-filter, downsample by keeping every `down`-th pixel.

    The same sequence as NVIDIA's upfirdn2d op (and scipy.signal.upfirdn per axis); `padding` is counted on the
    upsampled image and may be negative.
    """
    upx, upy = _pair(up)
    downx, downy = _pair(down)
    px0, px1, py0, py1 = parse_padding(padding)
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    x = zero_upsample(x, upx, upy)
    x = pad_or_crop(x, px0, px1, py0, py1)
    x = fir_conv(x, f, flip_filter=flip_filter, gain=gain)
    if downx > 1 or downy > 1:
        x = x[:, :, ::downy, ::downx]
    return x


def filter2d(x, f, padding=0, flip_filter=False, gain=1):
    """Filter keeping the size (plus any extra `padding`)."""
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=pad, flip_filter=flip_filter, gain=gain)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1):
    """Upsample by `up` with the filter: (n, c, h, w) -> (n, c, h*up, w*up) (plus any extra `padding`).

    The gain is multiplied by up*up because zero insertion leaves only one pixel in up*up non-zero.
    """
    upx, upy = _pair(up)
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2, py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * upx * upy)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1):
    """Downsample by `down` with the filter: (n, c, h, w) -> (n, c, h/down, w/down)."""
    downx, downy = _pair(down)
    px0, px1, py0, py1 = parse_padding(padding)
    fw, fh = filter_size(f)
    pad = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2, py0 + (fh - downy + 1) // 2,
           py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain)


# ---------------------------------------------------------------------------------------------------------------------
# Mapping network


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row to unit root-mean-square (pixel norm)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class FullyConnectedLayer(nn.Module):
    """A linear layer with an equalized learning rate: weights stored as N(0, 1) / lr_multiplier and scaled at run
    time by lr_multiplier / sqrt(in_features), the bias scaled by lr_multiplier.

    Takes the keyword arguments of both NVIDIA versions (StyleGAN2-ADA: bias, activation, lr_multiplier, bias_init;
    StyleGAN3 adds weight_init and a per-feature bias_init). Everything after the sizes is keyword-only because the two
    versions order them differently. Parameters: `weight` (out, in), `bias` (out,).
    """

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, activation: str = "linear",
                 lr_multiplier: float = 1, weight_init: float = 1, bias_init=0):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) * (weight_init / lr_multiplier))
        # The bias is stored divided by lr_multiplier so that it starts at bias_init (StyleGAN3's convention; the
        # mapping layers of both versions start at 0, where the conventions agree).
        init = torch.broadcast_to(torch.as_tensor(bias_init, dtype=torch.float32), [out_features])
        self.bias = nn.Parameter(init / lr_multiplier) if bias else None
        self.weight_gain = float(lr_multiplier / math.sqrt(in_features))
        self.bias_gain = float(lr_multiplier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (n, in) -> (n, out)
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())  # one Gemm, the same rounding as NVIDIA's
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class MappingNetwork(nn.Module):
    """z (and an optional label c) -> w, broadcast to `num_ws` copies, optionally truncated towards `w_avg`.

    Takes the keyword arguments of StyleGAN2-ADA's mapping network and of both StyleGAN3 ones. The defaults are the
    StyleGAN2 ones (8 layers, w_avg_beta 0.995); StyleGAN3's own mapping network wants `**SG3_MAPPING_DEFAULTS`
    (2 layers, w_avg_beta 0.998) unless its kwargs say otherwise. Parameters: `embed` (when c_dim > 0),
    `fc0`..`fc{num_layers-1}`, buffer `w_avg` (w_dim,).

    `w_avg_beta` only matters for training (the decay of the running mean of w, which we never update here); when
    it or num_ws is None there is no `w_avg` buffer, as in NVIDIA's StyleGAN2 code (their StyleGAN3 code always has
    one, but never sets w_avg_beta=None).
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, num_ws: int | None, num_layers: int = 8,
                 embed_features: int | None = None, layer_features: int | None = None, activation: str = "lrelu",
                 lr_multiplier: float = 0.01, w_avg_beta: float | None = 0.995):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.num_layers = num_layers
        self.w_avg_beta = w_avg_beta
        if c_dim == 0:
            embed_features = 0
        elif embed_features is None:
            embed_features = w_dim
        if layer_features is None:
            layer_features = w_dim
        sizes = [z_dim + embed_features] + [layer_features] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed_features)
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(sizes[idx], sizes[idx + 1], activation=activation,
                                                          lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z: torch.Tensor | None, c: torch.Tensor | None = None, truncation_psi: float = 1,
                truncation_cutoff: int | None = None) -> torch.Tensor:
        """(n, z_dim), (n, c_dim) -> (n, num_ws, w_dim), or (n, w_dim) when num_ws is None.

        Truncation moves the first `truncation_cutoff` ws (all when None) a fraction 1 - psi of the way to w_avg.
        psi and cutoff are Python numbers, so they are baked into an exported graph.
        """
        parts = []
        if self.z_dim > 0:
            parts.append(normalize_2nd_moment(z.to(torch.float32)))  # (n, z_dim)
        if self.c_dim > 0:
            if c is None:
                raise ValueError(f"this mapping network is conditional (c_dim={self.c_dim}): pass labels c")
            parts.append(normalize_2nd_moment(self.embed(c.to(torch.float32))))  # (n, embed_features)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)  # (n, w_dim) after the last layer
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])  # (n, num_ws, w_dim)
        if truncation_psi != 1:
            towards_avg = self.w_avg.lerp(x, float(truncation_psi))
            if self.num_ws is None or truncation_cutoff is None:
                x = towards_avg
            else:
                # concatenation rather than NVIDIA's in-place slice assignment: same values, cleaner graph
                x = torch.cat([towards_avg[:, :truncation_cutoff], x[:, truncation_cutoff:]], dim=1)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


# StyleGAN3's mapping network (training/networks_stylegan3.py) differs from StyleGAN2's only in these defaults.
SG3_MAPPING_DEFAULTS = {"num_layers": 2, "w_avg_beta": 0.998}
