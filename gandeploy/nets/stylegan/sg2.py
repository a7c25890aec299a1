"""StyleGAN2 generator (Karras et al. 2020, arXiv:1912.04958; the ADA variant arXiv:2006.06676), written for export.

It loads NVIDIA's generator weights by name: `Generator(**nvidia_init_kwargs).load_state_dict(nvidia_G.state_dict())`
works with `strict=True`, for both `training.networks.Generator` (stylegan2-ada-pytorch) and
`training.networks_stylegan2.Generator` (stylegan3; see `Generator.from_nvidia` for its different defaults). In
float32 the images agree with NVIDIA's to rounding.

What differs from NVIDIA's code, and why:
- Modulated convolutions are never fused into one grouped conv (whose group count is the batch size, which would
  freeze the batch axis): the activations are scaled by the styles, convolved with the shared weight, and the output
  scaled by the demodulation coefficients, as NVIDIA's own non-fused path does. Same values up to rounding.
- Resampling is built from pad / reshape / conv2d / conv_transpose2d (see common.py), no custom ops.
- No fp16 path and no training-only behaviour (w_avg updates, random noise): fp16 options are accepted and ignored,
  and noise_mode='random' is refused because noise drawn inside the graph cannot be exported deterministically.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import (FullyConnectedLayer, MappingNetwork, activation_gain, bias_act, filter_size, pad_or_crop,
                     parse_padding, setup_filter, upfirdn2d, upsample2d)

NOISE_MODES = ("const", "none")
ARCHITECTURES = ("orig", "skip", "resnet")

# ---------------------------------------------------------------------------------------------------------------------
# Convolution with resampling


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, up: int = 1, down: int = 1,
                    padding=0, flip_weight: bool = True) -> torch.Tensor:
    """conv2d of x with w, with FIR-filtered up- or downsampling around it; `padding` counts on the upsampled image.

    flip_weight=True correlates (plain F.conv2d), False convolves. Upsampling uses a stride-`up` transposed conv and
    then the filter, which equals zero insertion + filter + conv but runs on the small image.
    """
    kh, kw = w.shape[2], w.shape[3]
    fw, fh = filter_size(f)
    px0, px1, py0, py1 = parse_padding(padding)
    if up > 1:  # room for the filter's support around the upsampled image
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2

    if up > 1 and down == 1 and kw == 1 and kh == 1:
        # a 1x1 conv commutes with the upsampling, so convolve the small image
        x = F.conv2d(x, w)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up * up)

    if up > 1:
        # The transposed conv already spreads each pixel over (k + up - 1) outputs, so the filter's padding shrinks by
        # what the kernel covers. Padding common to every side is handed to the transposed conv as cropping.
        px0, px1 = px0 - (kw - 1), px1 - (kw - up)
        py0, py1 = py0 - (kh - 1), py1 - (kh - up)
        crop_x = max(min(-px0, -px1), 0)
        crop_y = max(min(-py0, -py1), 0)
        wt = w.transpose(0, 1)  # (in, out, kh, kw), conv_transpose2d's layout
        if flip_weight:  # conv_transpose2d is a true convolution; flip to correlate
            wt = wt.flip([2, 3])
        x = F.conv_transpose2d(x, wt, stride=up, padding=[crop_y, crop_x])
        x = upfirdn2d(x, f, padding=[px0 + crop_x, px1 + crop_x, py0 + crop_y, py1 + crop_y], gain=up * up)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x

    if not flip_weight:  # F.conv2d correlates; flip to convolve
        w = w.flip([2, 3])
    if down > 1:
        if kw == 1 and kh == 1:  # a 1x1 conv commutes with the downsampling: shrink first
            x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
            return F.conv2d(x, w)
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return F.conv2d(x, w, stride=down)
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return F.conv2d(x, w, padding=[py0, px0])
    return F.conv2d(pad_or_crop(x, px0, px1, py0, py1), w)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, noise: torch.Tensor | None = None,
                     up: int = 1, padding: int = 0, resample_filter: torch.Tensor | None = None,
                     demodulate: bool = True, flip_weight: bool = True) -> torch.Tensor:
    """StyleGAN2's modulated conv with per-sample styles, as ordinary ops with a dynamic batch.

    x (n, in, h, w), weight (out, in, kh, kw), styles (n, in), noise broadcastable to the output. Scaling the input
    channels by the styles is the same as scaling the weight's input channels; demodulation divides each output
    channel by the norm of its modulated weight, so it can be applied to the output instead.
    """
    out_c, in_c = weight.shape[0], weight.shape[1]
    x = x * styles.reshape(-1, in_c, 1, 1)  # (n, in, h, w); also broadcasts a (1, in, h, w) input to the batch
    x = conv2d_resample(x, weight, f=resample_filter, up=up, padding=padding, flip_weight=flip_weight)
    if demodulate:
        # |weight * style|^2 summed over (in, kh, kw) = sum_in style^2 * sum_k weight^2: a small matmul instead of
        # materialising a (n, out, in, kh, kw) tensor
        dcoefs = (styles.square().matmul(weight.square().sum(dim=[2, 3]).t()) + 1e-8).rsqrt()  # (n, out)
        x = x * dcoefs.reshape(-1, out_c, 1, 1)
    if noise is not None:
        x = x + noise
    return x


# ---------------------------------------------------------------------------------------------------------------------
# Layers


class Conv2dLayer(nn.Module):
    """Equalized-learning-rate conv with optional resampling; StyleGAN2 uses it for the resnet skip path.

    `channels_last` is accepted and ignored. State: `weight`, `bias`, buffer `resample_filter`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True,
                 activation: str = "linear", up: int = 1, down: int = 1, resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, channels_last: bool = False, trainable: bool = True):
        super().__init__()
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = activation_gain(activation)
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size])
        b = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = nn.Parameter(weight)
            self.bias = nn.Parameter(b) if b is not None else None
        else:  # frozen layers keep their tensors as buffers, under the same names
            self.register_buffer("weight", weight)
            self.register_buffer("bias", b)

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = self.weight * self.weight_gain
        x = conv2d_resample(x, w.to(x.dtype), f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        b = self.bias.to(x.dtype) if self.bias is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally upsampling 2x), noise, bias, lrelu.

    State: `affine` (w -> styles, bias starting at 1), `weight` (out, in, k, k), `bias`, buffers `resample_filter` and
    `noise_const` (res, res) plus parameter `noise_strength` when use_noise.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, kernel_size: int = 3,
                 up: int = 1, use_noise: bool = True, activation: str = "lrelu", resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = activation_gain(activation)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise_mode: str = "const", gain: float = 1) -> torch.Tensor:
        # x (n, in, res/up, res/up), w (n, w_dim) -> (n, out, res, res)
        check_noise_mode(noise_mode)
        styles = self.affine(w)  # (n, in)
        noise = None
        if self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength  # (res, res), the same for every sample
        # NVIDIA correlates at the native resolution and convolves (flipped kernel) when upsampling; the stored
        # weights are meant for exactly that
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 conv to image channels, without demodulation. State: `affine`, `weight`, `bias`."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1,
                 conv_clamp: float | None = None, channels_last: bool = False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, kernel_size, kernel_size]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # (n, in, h, w) -> (n, img_channels, h, w)
        styles = self.affine(w) * self.weight_gain  # equalized lr folded into the styles: there is no demodulation
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


def check_noise_mode(noise_mode: str) -> None:
    if noise_mode == "random":
        raise ValueError("noise_mode='random' is not supported: noise drawn inside the network cannot be exported "
                         "deterministically; use 'const' (the stored noise_const buffers) or 'none'")
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Blocks and networks


class SynthesisBlock(nn.Module):
    """One resolution: (upsampling conv0 +) conv1, and a toRGB for the 'skip' architecture or the last block.

    architecture 'orig': only the last block makes an image; 'skip': every block adds its toRGB to the upsampled
    image so far; 'resnet': a 1x1 upsampling skip conv beside conv0/conv1, the two branches each scaled by sqrt(1/2).
    use_fp16, fp16_channels_last and fused_modconv_default are accepted and ignored (float32, never fused).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 is_last: bool, architecture: str = "skip", resample_filter=(1, 3, 3, 1),
                 conv_clamp: float | None = None, use_fp16: bool = False, fp16_channels_last: bool = False,
                 fused_modconv_default=True, **layer_kwargs):
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {architecture!r}")
        super().__init__()
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.register_buffer("resample_filter", setup_filter(resample_filter))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, noise_mode: str = "const"):
        # x (n, in, res/2, res/2) or None, img (n, img_channels, res/2, res/2) or None,
        # ws (n, num_conv + num_torgb, w_dim) -> x (n, out, res, res), img (n, img_channels, res, res) or None
        idx = 0
        if self.in_channels == 0:
            x = self.const.unsqueeze(0)  # (1, c, 4, 4); the first modulation broadcasts it to the batch
            x = self.conv1(x, ws[:, 0], noise_mode=noise_mode)
            idx = 1
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, ws[:, 0], noise_mode=noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode=noise_mode, gain=math.sqrt(0.5))
            x = y + x
            idx = 2
        else:
            x = self.conv0(x, ws[:, 0], noise_mode=noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode=noise_mode)
            idx = 2
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, ws[:, idx])
            img = img + y if img is not None else y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (n, num_ws, w_dim) -> image (n, img_channels, res, res), blocks `b4`, `b8`, ... `b{res}`.

    Channels per resolution: min(channel_base // res, channel_max). num_fp16_res is accepted and ignored.
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, channel_base: int = 32768,
                 channel_max: int = 512, num_fp16_res: int = 0, **block_kwargs):
        if img_resolution < 4 or img_resolution & (img_resolution - 1) != 0:
            raise ValueError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.num_fp16_res = num_fp16_res
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            is_last = res == img_resolution
            block = SynthesisBlock(channels[res // 2] if res > 4 else 0, channels[res], w_dim=w_dim, resolution=res,
                                   img_channels=img_channels, is_last=is_last, **block_kwargs)
            # consecutive blocks share a w: a block's toRGB uses the same w as the next block's conv0
            self.num_ws += block.num_conv + (block.num_torgb if is_last else 0)
            setattr(self, f"b{res}", block)

    def forward(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        check_noise_mode(noise_mode)
        ws = ws.to(torch.float32)
        x = img = None
        start = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block_ws = ws.narrow(1, start, block.num_conv + block.num_torgb)
            x, img = block(x, img, block_ws, noise_mode=noise_mode)
            start += block.num_conv
        return img


# kwargs NVIDIA's stylegan3 repo (training/networks_stylegan2.py) defaults differently from stylegan2-ada-pytorch;
# only conv_clamp changes the images
_SG3_REPO_SYNTHESIS_DEFAULTS = {"conv_clamp": 256, "num_fp16_res": 4}
_SG3_REPO_MAPPING_DEFAULTS = {"w_avg_beta": 0.998}


class Generator(nn.Module):
    """StyleGAN2 generator: z (n, z_dim), c (n, c_dim) -> image (n, img_channels, res, res), float32.

    Takes NVIDIA's constructor arguments: synthesis options either in `synthesis_kwargs` (stylegan2-ada-pytorch) or
    as extra keywords (stylegan3's networks_stylegan2), e.g. architecture, channel_base, channel_max, conv_clamp,
    resample_filter, use_noise, num_fp16_res. The defaults are stylegan2-ada-pytorch's; for a stylegan3-repo network
    whose kwargs rely on that repo's defaults use `Generator.from_nvidia(class_name, kwargs)`.
    """

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int,
                 mapping_kwargs: dict | None = None, synthesis_kwargs: dict | None = None, **more_synthesis_kwargs):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = {**(synthesis_kwargs or {}), **more_synthesis_kwargs}
        self.init_kwargs = {"z_dim": z_dim, "c_dim": c_dim, "w_dim": w_dim, "img_resolution": img_resolution,
                            "img_channels": img_channels, "mapping_kwargs": mapping_kwargs,
                            "synthesis_kwargs": synthesis_kwargs}
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    @classmethod
    def from_nvidia(cls, class_name: str, init_kwargs: dict, init_args=()) -> "Generator":
        """Build from the class name and constructor arguments NVIDIA's pickles record.

        'training.networks.Generator' (stylegan2-ada-pytorch) takes its kwargs as they are;
        'training.networks_stylegan2.Generator' (stylegan3) gets that repo's defaults (conv_clamp 256) where its
        kwargs leave them out.
        """
        kwargs = dict(init_kwargs)
        if class_name.endswith("networks_stylegan2.Generator"):
            names = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs"]
            kwargs.update(zip(names, init_args))
            synthesis = {**_SG3_REPO_SYNTHESIS_DEFAULTS, **kwargs.pop("synthesis_kwargs", {})}
            for key in list(kwargs):
                if key not in names:
                    synthesis[key] = kwargs.pop(key)
            kwargs["synthesis_kwargs"] = synthesis
            kwargs["mapping_kwargs"] = {**_SG3_REPO_MAPPING_DEFAULTS, **kwargs.get("mapping_kwargs", {})}
        elif class_name.endswith("networks.Generator"):
            names = ["z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"]
            kwargs.update(zip(names, init_args))
        else:
            raise ValueError(f"not a StyleGAN2 generator class: {class_name!r}")
        return cls(**kwargs)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None, truncation_psi: float = 1.0,
                truncation_cutoff: int | None = None, noise_mode: str = "const") -> torch.Tensor:
        check_noise_mode(noise_mode)
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, noise_mode=noise_mode)  # (n, img_channels, res, res)
