"""StyleGAN3 generator (alias-free GAN, the -T and -R configurations), written for export.

The module tree, parameter names and buffer shapes follow NVIDIA's `training.networks_stylegan3.Generator`, so a
state dict from one of NVIDIA's pickles loads here with `strict=True`. What differs is how the forward pass is
written: only plain tensor ops that ONNX (and TensorRT's ONNX parser) know, with the batch axis left dynamic.

* Modulated convolution scales the activations by the styles, runs one ordinary convolution with the shared weight
  and then scales the result by the demodulation coefficients, instead of building one weight per sample and
  running a grouped convolution with groups=batch (which would fix the batch size in the graph).
* The filtered leaky ReLU (bias, upsample, FIR filter, leaky ReLU, clamp, FIR filter, downsample) is zero
  insertion, padding/cropping and fixed-filter depthwise convolutions, with the padding arithmetic of NVIDIA's
  reference (non-CUDA) implementation.
* Everything runs in float32; `num_fp16_res` is accepted and ignored.

The low-pass filters and Fourier frequencies are buffers. They are designed here at construction (numpy and
torch only, no scipy), and a loaded state dict overwrites them, so loading NVIDIA's weights gives NVIDIA's filters
exactly.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import SG3_MAPPING_DEFAULTS, FullyConnectedLayer, MappingNetwork, pad_or_crop, zero_upsample

# ----------------------------------------------------------------------------------------------------------------
# Filter design (Kaiser-windowed sinc for separable filters, Kaiser-windowed jinc for radial ones).


def _kaiser_beta(attenuation_db: float) -> float:
    """Kaiser's empirical window parameter for a given stopband attenuation (dB)."""
    a = attenuation_db
    if a > 50:
        return 0.1102 * (a - 8.7)
    if a > 21:
        return 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21)
    return 0.0


def _kaiser_attenuation(numtaps: int, width_rel_nyquist: float) -> float:
    """Stopband attenuation (dB) reachable with `numtaps` taps and the given transition width."""
    return 2.285 * (numtaps - 1) * math.pi * width_rel_nyquist + 7.95


def _kaiser_window(numtaps: int, width: float, fs: float) -> np.ndarray:
    beta = _kaiser_beta(_kaiser_attenuation(numtaps, width / (fs / 2)))
    return np.kaiser(numtaps, beta)


def lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False):
    """A low-pass FIR filter as a float32 tensor: (numtaps,) separable, (numtaps, numtaps) radial; None when one
    tap (the identity). Same design as NVIDIA's (scipy's firwin with a Kaiser window, and a windowed jinc)."""
    if numtaps == 1:
        return None
    window = _kaiser_window(numtaps, width, fs)  # (t,)
    if not radial:
        # ideal low-pass impulse response, sampled at offsets centred on the middle tap
        rel_cutoff = cutoff / (fs / 2)
        offsets = np.arange(numtaps) - (numtaps - 1) / 2
        taps = rel_cutoff * np.sinc(rel_cutoff * offsets) * window
        return torch.as_tensor(taps / taps.sum(), dtype=torch.float32)
    # the 2D ideal disc low-pass is a jinc of the radius
    coords = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    radius = np.hypot(*np.meshgrid(coords, coords))  # (t, t)
    j1 = torch.special.bessel_j1(torch.from_numpy(2 * math.pi * cutoff * radius)).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        taps = np.where(radius > 0, j1 / (math.pi * radius), cutoff)  # the limit at r = 0 is the cutoff
    taps = taps * np.outer(window, window)
    return torch.as_tensor(taps / taps.sum(), dtype=torch.float32)


# ----------------------------------------------------------------------------------------------------------------
# Building blocks as plain ops.


def modulated_conv2d(x, weight, styles, demodulate: bool, input_gain, padding: int):
    """StyleGAN's modulated convolution with the modulation moved onto the activations.

    x (n, i, h, w), weight (o, i, k, k), styles (n, i), input_gain a scalar tensor. Scaling input channel i of
    sample n by s[n, i] before a shared convolution equals convolving with the per-sample weight w[o, i] * s[n, i];
    per-output-channel factors (weight normalisation, demodulation) commute with the convolution and are applied
    to its output. So the Conv's weight is the stored parameter itself, a constant (initializer) of the exported
    graph, as TensorRT prefers.
    """
    if demodulate:
        # Normalise magnitudes first, for float headroom, as NVIDIA does; demodulation cancels both factors up to
        # its epsilon. The styles are normalised per sample (NVIDIA: over the whole batch) so that a sample's image
        # does not depend on the rest of its batch.
        styles = styles * styles.square().mean(dim=1, keepdim=True).rsqrt()  # (n, i)
    x = x * (styles * input_gain).unsqueeze(2).unsqueeze(3)  # (n, i, h, w)
    x = F.conv2d(x, weight, padding=padding)  # (n, o, h', w')
    if not demodulate:
        return x
    weight_scale = weight.square().mean(dim=[1, 2, 3]).rsqrt()  # (o,)
    normalized = weight * weight_scale.reshape(-1, 1, 1, 1)  # (o, i, k, k)
    # squared norm of the per-sample weight w'[o, i] * s[n, i] over (i, k, k), without materialising it
    energy = styles.square() @ normalized.square().sum(dim=[2, 3]).t()  # (n, o)
    # the conv ran with the un-normalised weight: its normalisation joins the demodulation on the output
    return x * (weight_scale * (energy + 1e-8).rsqrt()).unsqueeze(2).unsqueeze(3)


def fir_filter(x, taps, gain: float = 1.0, stride: int = 1):
    """Convolve every channel with the same FIR filter ('valid' extent) and keep every stride-th pixel.

    taps: (t,) applied along rows then columns, (t, t) applied as one 2D kernel, or None (identity). The total
    gain is spread evenly over the two passes of a separable filter. Subsampling is the convolution's stride,
    which computes only the kept pixels (common.upfirdn2d would filter every pixel and then slice).
    """
    if taps is None:
        x = x * gain if gain != 1 else x
        return x[:, :, ::stride, ::stride] if stride > 1 else x
    channels = x.shape[1]
    kernel = taps.flip(list(range(taps.ndim))) * (gain ** (taps.ndim / 2))  # true convolution, not correlation
    if taps.ndim == 1:
        t = kernel.shape[0]
        x = F.conv2d(x, kernel.reshape(1, 1, 1, t).expand(channels, 1, 1, t), stride=(1, stride), groups=channels)
        return F.conv2d(x, kernel.reshape(1, 1, t, 1).expand(channels, 1, t, 1), stride=(stride, 1),
                        groups=channels)
    t = kernel.shape[0]
    return F.conv2d(x, kernel.reshape(1, 1, t, t).expand(channels, 1, t, t), stride=stride, groups=channels)


def filtered_lrelu(x, up_taps, down_taps, bias, up: int, down: int, padding, gain: float, slope: float,
                   clamp):
    """Bias, upsample by `up`, low-pass, leaky ReLU with gain and clamp, low-pass, downsample by `down`.

    padding is (x0, x1, y0, y1) with respect to the upsampled image; negative values crop. The same sequence as
    NVIDIA's reference filtered_lrelu, so outputs agree to float rounding.
    """
    x = x + bias.reshape(1, -1, 1, 1)  # (n, c, h, w)
    x = zero_upsample(x, up, up)  # (n, c, h*up, w*up)
    x = pad_or_crop(x, *padding)
    x = fir_filter(x, up_taps, gain=up ** 2)  # zero insertion keeps 1/up^2 of the energy: restore it
    if slope != 1:
        x = F.leaky_relu(x, slope)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return fir_filter(x, down_taps, stride=down)  # (n, c, h_out, w_out)


# ----------------------------------------------------------------------------------------------------------------
# Layer schedule.


def layer_schedule(img_resolution: int, img_channels: int, channel_base: int, channel_max: int, num_layers: int,
                   num_critical: int, first_cutoff: float, first_stopband: float, last_stopband_rel: float,
                   margin_size: int) -> dict:
    """Per-layer cutoffs, stopbands, sampling rates, transition half-widths, sizes and channel counts (index 0 is
    the Fourier input, the last entry the ToRGB layer), in numpy float64 like NVIDIA so the layer names agree."""
    last_cutoff = img_resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    # geometric progression from the first layer to the first critically sampled one, then flat
    progress = np.minimum(np.arange(num_layers + 1) / (num_layers - num_critical), 1)
    cutoffs = first_cutoff * (last_cutoff / first_cutoff) ** progress
    stopbands = first_stopband * (last_stopband / first_stopband) ** progress
    # the smallest power of two that holds the stopband, capped at the image resolution
    sampling_rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, img_resolution))))
    half_widths = np.maximum(stopbands, sampling_rates / 2) - cutoffs
    sizes = sampling_rates + margin_size * 2
    sizes[-2:] = img_resolution  # the last two layers are cropped to the image
    channels = np.rint(np.minimum((channel_base / 2) / cutoffs, channel_max))
    channels[-1] = img_channels
    return {"cutoffs": cutoffs, "sampling_rates": sampling_rates, "half_widths": half_widths, "sizes": sizes,
            "channels": channels}


# ----------------------------------------------------------------------------------------------------------------
# Modules.


class SynthesisInput(nn.Module):
    """Fourier features rotated and translated per sample by an affine of w, then mixed by a learned matrix."""

    def __init__(self, w_dim: int, channels: int, size: int, sampling_rate: float, bandwidth: float):
        super().__init__()
        self.w_dim = w_dim
        self.channels = channels
        self.size = int(size)
        self.sampling_rate = float(sampling_rate)
        self.bandwidth = float(bandwidth)

        # frequencies drawn inside a disc of radius `bandwidth`, random phases (overwritten by loaded weights)
        freqs = torch.randn(channels, 2)
        radii = freqs.square().sum(dim=1, keepdim=True).sqrt()
        freqs = freqs / (radii * radii.square().exp().pow(0.25)) * bandwidth
        phases = torch.rand(channels) - 0.5

        self.weight = nn.Parameter(torch.randn(channels, channels))
        # starts as the identity transform: (cos, sin, tx, ty) = (1, 0, 0, 0)
        self.affine = FullyConnectedLayer(w_dim, 4, weight_init=0, bias_init=[1, 0, 0, 0])
        self.register_buffer("transform", torch.eye(3))  # a user transform of the image, applied after the learned one
        self.register_buffer("freqs", freqs)  # (channels, 2)
        self.register_buffer("phases", phases)  # (channels,)

        # pixel-centre coordinates in units of the sampling period; a constant, so not part of the state dict
        half_extent = 0.5 * self.size / self.sampling_rate
        theta = torch.tensor([[[half_extent, 0.0, 0.0], [0.0, half_extent, 0.0]]])
        grid = F.affine_grid(theta, [1, 1, self.size, self.size], align_corners=False)  # (1, h, w, 2)
        self.register_buffer("grid", grid.reshape(1, self.size * self.size, 2), persistent=False)

    def _transforms(self, w):
        """The per-sample 3x3 inverse transform: rotation, then translation, then the user transform. (n, 3, 3)"""
        t = self.affine(w)  # (n, 4): cos, sin, tx, ty, up to a common scale of the rotation pair
        t = t / t[:, :2].square().sum(dim=1, keepdim=True).sqrt()
        cos, sin, tx, ty = t[:, 0], t[:, 1], t[:, 2], t[:, 3]  # each (n,)
        zero, one = torch.zeros_like(cos), torch.ones_like(cos)
        rotate = torch.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], dim=1).reshape(-1, 3, 3)
        translate = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], dim=1).reshape(-1, 3, 3)
        return rotate @ translate @ self.transform.unsqueeze(0)

    def forward(self, w):
        transforms = self._transforms(w)  # (n, 3, 3)
        # a translation shifts the phases, the linear part turns the frequencies
        phases = self.phases.unsqueeze(0) + (self.freqs.unsqueeze(0) @ transforms[:, :2, 2:]).squeeze(2)  # (n, c)
        freqs = self.freqs.unsqueeze(0) @ transforms[:, :2, :2]  # (n, c, 2)
        # fade out frequencies that a user transform pushed beyond the band
        magnitude = freqs.square().sum(dim=2).sqrt()  # (n, c)
        amplitudes = (1 - (magnitude - self.bandwidth) / (self.sampling_rate / 2 - self.bandwidth)).clamp(0, 1)

        x = self.grid @ freqs.transpose(1, 2)  # (n, h*w, c)
        x = x + phases.unsqueeze(1)
        x = torch.sin(x * (math.pi * 2)) * amplitudes.unsqueeze(1)
        x = x @ (self.weight / math.sqrt(self.channels)).t()  # (n, h*w, c)
        return x.transpose(1, 2).reshape(-1, self.channels, self.size, self.size)  # (n, c, h, w)


class SynthesisLayer(nn.Module):
    """Modulated convolution followed by the filtered leaky ReLU (or, for ToRGB, by bias and clamp only)."""

    def __init__(self, w_dim: int, is_torgb: bool, is_critically_sampled: bool, use_fp16: bool,
                 in_channels: int, out_channels: int, in_size: int, out_size: int,
                 in_sampling_rate: float, out_sampling_rate: float, in_cutoff: float, out_cutoff: float,
                 in_half_width: float, out_half_width: float, conv_kernel: int = 3, filter_size: int = 6,
                 lrelu_upsampling: int = 2, use_radial_filters: bool = False, conv_clamp=256,
                 magnitude_ema_beta: float = 0.999):
        super().__init__()
        self.is_torgb = is_torgb
        self.is_critically_sampled = is_critically_sampled
        self.use_fp16 = use_fp16  # recorded only: this module computes in float32
        self.in_channels, self.out_channels = in_channels, out_channels
        self.in_size, self.out_size = int(in_size), int(out_size)
        self.conv_kernel = 1 if is_torgb else conv_kernel
        self.conv_clamp = conv_clamp
        self.magnitude_ema_beta = magnitude_ema_beta
        # the nonlinearity runs at a higher rate than either side, to keep its harmonics below the new Nyquist
        tmp_sampling_rate = max(in_sampling_rate, out_sampling_rate) * (1 if is_torgb else lrelu_upsampling)

        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, self.conv_kernel, self.conv_kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("magnitude_ema", torch.ones([]))

        self.up_factor = int(np.rint(tmp_sampling_rate / in_sampling_rate))
        self.down_factor = int(np.rint(tmp_sampling_rate / out_sampling_rate))
        assert in_sampling_rate * self.up_factor == tmp_sampling_rate
        assert out_sampling_rate * self.down_factor == tmp_sampling_rate
        up_taps = filter_size * self.up_factor if self.up_factor > 1 and not is_torgb else 1
        down_taps = filter_size * self.down_factor if self.down_factor > 1 and not is_torgb else 1
        self.down_radial = use_radial_filters and not is_critically_sampled
        # a one-tap filter is the identity and registered as None, which keeps it out of the state dict
        self.register_buffer("up_filter", lowpass_filter(up_taps, in_cutoff, in_half_width * 2, tmp_sampling_rate))
        self.register_buffer("down_filter", lowpass_filter(down_taps, out_cutoff, out_half_width * 2,
                                                           tmp_sampling_rate, radial=self.down_radial))

        # Padding of the upsampled image so that, after both filters and the stride, exactly out_size remain;
        # the extra up_factor in pad_lo centres the samples (the symmetric interpretation of pixel positions).
        pad_total = (self.out_size - 1) * self.down_factor + 1
        pad_total -= (self.in_size + self.conv_kernel - 1) * self.up_factor
        pad_total += up_taps + down_taps - 2
        pad_lo = (pad_total + self.up_factor) // 2
        pad_hi = pad_total - pad_lo
        self.padding = (pad_lo, pad_hi, pad_lo, pad_hi)  # x0, x1, y0, y1

    def forward(self, x, w):
        styles = self.affine(w)  # (n, in_channels)
        if self.is_torgb:
            styles = styles * (1 / math.sqrt(self.in_channels * self.conv_kernel ** 2))
        # the running input magnitude normalises the input (NVIDIA tracks it during training; fixed here)
        input_gain = self.magnitude_ema.rsqrt()
        x = modulated_conv2d(x, self.weight, styles, demodulate=not self.is_torgb, input_gain=input_gain,
                             padding=self.conv_kernel - 1)  # (n, out_channels, h + k - 1, w + k - 1)
        gain, slope = (1.0, 1.0) if self.is_torgb else (math.sqrt(2), 0.2)
        return filtered_lrelu(x, self.up_filter, self.down_filter, self.bias, self.up_factor, self.down_factor,
                              self.padding, gain=gain, slope=slope, clamp=self.conv_clamp)


class SynthesisNetwork(nn.Module):
    """ws (n, num_ws, w_dim) -> images (n, img_channels, img_resolution, img_resolution)."""

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_layers: int = 14, num_critical: int = 2, first_cutoff: float = 2,
                 first_stopband: float = 2 ** 2.1, last_stopband_rel: float = 2 ** 0.3, margin_size: int = 10,
                 output_scale: float = 0.25, num_fp16_res: int = 4, **layer_kwargs):
        super().__init__()
        self.w_dim = w_dim
        self.num_ws = num_layers + 2
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_layers = num_layers
        self.output_scale = output_scale
        plan = layer_schedule(img_resolution, img_channels, channel_base, channel_max, num_layers, num_critical,
                              first_cutoff, first_stopband, last_stopband_rel, margin_size)
        cutoffs, rates, half_widths = plan["cutoffs"], plan["sampling_rates"], plan["half_widths"]
        sizes, channels = plan["sizes"], plan["channels"]

        self.input = SynthesisInput(w_dim, int(channels[0]), int(sizes[0]), rates[0], cutoffs[0])
        self.layer_names = []
        for idx in range(num_layers + 1):
            prev = max(idx - 1, 0)
            layer = SynthesisLayer(
                w_dim, is_torgb=idx == num_layers, is_critically_sampled=idx >= num_layers - num_critical,
                use_fp16=bool(rates[idx] * 2 ** num_fp16_res > img_resolution),
                in_channels=int(channels[prev]), out_channels=int(channels[idx]),
                in_size=int(sizes[prev]), out_size=int(sizes[idx]),
                in_sampling_rate=int(rates[prev]), out_sampling_rate=int(rates[idx]),
                in_cutoff=cutoffs[prev], out_cutoff=cutoffs[idx],
                in_half_width=half_widths[prev], out_half_width=half_widths[idx], **layer_kwargs)
            name = f"L{idx}_{layer.out_size}_{layer.out_channels}"
            setattr(self, name, layer)
            self.layer_names.append(name)

    def forward(self, ws):
        ws = ws.to(torch.float32).unbind(dim=1)  # num_ws tensors of (n, w_dim)
        x = self.input(ws[0])
        for name, w in zip(self.layer_names, ws[1:]):
            x = getattr(self, name)(x, w)
        if self.output_scale != 1:
            x = x * self.output_scale
        return x


class Generator(nn.Module):
    """z (n, z_dim) and one-hot c (n, c_dim) -> float32 images (n, img_channels, img_resolution, img_resolution),
    roughly in [-1, 1]. Same constructor arguments and state dict as NVIDIA's StyleGAN3 Generator."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict | None = None, **synthesis_kwargs):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        # StyleGAN3's mapping defaults (2 layers) differ from the shared class's StyleGAN2 ones
        mapping_kwargs = {**SG3_MAPPING_DEFAULTS, **(mapping_kwargs or {})}
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z, c=None, truncation_psi: float = 1.0, truncation_cutoff: int | None = None,
                noise_mode: str = "const"):
        # StyleGAN3 has no noise inputs; 'random' is refused (as for StyleGAN2 here) rather than silently ignored,
        # so that a caller never believes an export draws fresh noise
        if noise_mode not in ("const", "none"):
            raise ValueError(f"noise_mode must be 'const' or 'none' for an exportable generator, not {noise_mode!r}")
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws)
