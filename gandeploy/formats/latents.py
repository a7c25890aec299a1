"""Latent vectors as a pure function of (seed, index): image k of seed s gets the same z whatever n, chunking or
backend asked for it.

The recipe, for reimplementation in another language:
  1. Philox4x64-10 (Salmon et al. 2011) with key = (seed, 0) and the 256-bit counter starting at 0, as
     numpy.random.Philox(key=seed). Each counter value yields four 64-bit words.
  2. Image k owns counter values [k * B, (k + 1) * B) with B = ceil(latent_dim / 4): 4 * B words, in order.
  3. Each word w becomes u = (w >> 11) * 2**-53, uniform in [0, 1).
  4. Consecutive pairs (u1, u2) become two normals by Box-Muller: r = sqrt(-2 ln(1 - u1)),
     (r cos(2 pi u2), r sin(2 pi u2)), computed in float64.
  5. The first latent_dim normals, rounded to float32, are z_k.

An export may declare another distribution (its generator's `latent_distribution`, `gandeploy export
--latent-dist`): steps 1-3 are the same, then each word's u gives one value:
  - truncated_normal with bound t: the inverse normal CDF of Phi(-t) + u (Phi(t) - Phi(-t)), so |z| <= t (BigGAN's
    truncnorm(-t, t)); the inverse CDF is Acklam's rational approximation (relative error < 1.2e-9);
  - uniform with bound b: b (2u - 1), in [-b, b).
and every distribution may carry a scale s (default 1) that multiplies z (BigGAN's truncation: truncnorm(-2, 2)
times 0.4 is truncated_normal, bound 2, scale 0.4).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .vocabulary import seed_problem

_MASK64 = (1 << 64) - 1
_local = threading.local()  # one Philox per thread, re-keyed per call: 3 us instead of 9 us for a new one
_EMPTY_BUFFER = np.zeros(4, np.uint64)  # read (copied) by the state setter, never written


DISTRIBUTIONS = ("normal", "truncated_normal", "uniform")
DEFAULT_BOUND = {"truncated_normal": 2.0, "uniform": 1.0}
NORMAL = {"name": "normal"}


def distribution(name: str = "normal", bound: float | None = None, scale: float = 1.0) -> dict:
    """The `latent_distribution` record of a generator: {"name", "bound" (not for normal), "scale"}; ValueError
    naming the problem for anything else."""
    if name not in DISTRIBUTIONS:
        raise ValueError(f"latent distribution {name!r} is not one of {', '.join(DISTRIBUTIONS)}")
    spec = {"name": name}
    if name == "normal":
        if bound is not None:
            raise ValueError("a normal latent distribution has no bound; use truncated_normal for one")
    else:
        bound = DEFAULT_BOUND[name] if bound is None else bound
        if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound <= 1e3:
            raise ValueError(f"the {name} latent bound must be a number in (0, 1000], got {bound!r}")
        spec["bound"] = float(bound)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1e3:
        raise ValueError(f"the latent scale must be a number in (0, 1000], got {scale!r}")
    spec["scale"] = float(scale)
    return spec


def latents(seed: int, n: int, dim: int, start: int = 0, dist: dict | None = None) -> np.ndarray:
    """float32 (n, dim): latents of images start .. start + n - 1 of `seed`, drawn from `dist` (a `distribution`
    record; None: the standard normal)."""
    problem = seed_problem(seed)
    if problem is not None:
        raise ValueError(problem)
    blocks = -(-dim // 4)
    counter = start * blocks
    bitgen = getattr(_local, "bitgen", None)
    if bitgen is None:
        bitgen = _local.bitgen = np.random.Philox(key=0)
    bitgen.state = {"bit_generator": "Philox", "buffer": _EMPTY_BUFFER, "buffer_pos": 4,
                    "has_uint32": 0, "uinteger": 0,
                    "state": {"counter": np.array([counter & _MASK64, counter >> 64, 0, 0], np.uint64),
                              "key": np.array([int(seed), 0], np.uint64)}}
    words = bitgen.random_raw(n * blocks * 4).reshape(n, blocks * 2, 2)
    u = (words >> np.uint64(11)) * 2.0**-53  # (n, pairs, 2) uniform in [0, 1)
    name = (dist or NORMAL)["name"]
    if name == "normal":
        radius = np.sqrt(-2.0 * np.log1p(-u[..., 0]))
        # r * exp(i * angle) holds (r cos, r sin) side by side: the pairs in order, in one pass
        z = (radius * np.exp(2j * np.pi * u[..., 1])).view(np.float64).reshape(n, blocks * 4)
    elif name == "truncated_normal":
        lo = _normal_cdf(-dist["bound"])
        p = np.maximum(lo + u.reshape(n, blocks * 4) * (1.0 - 2.0 * lo), np.finfo(np.float64).tiny)
        z = np.clip(_normal_quantile(p), -dist["bound"], dist["bound"])
    elif name == "uniform":
        z = dist["bound"] * (2.0 * u.reshape(n, blocks * 4) - 1.0)
    else:
        raise ValueError(f"latent distribution {name!r} is not one of {', '.join(DISTRIBUTIONS)}")
    scale = (dist or NORMAL).get("scale", 1.0)
    return np.ascontiguousarray(z[:, :dim] * scale if scale != 1.0 else z[:, :dim], dtype=np.float32)


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


# Acklam's inverse normal CDF: rational approximations in the centre (|p - 0.5| <= 0.47575) and in the tails
_A = (-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
      -3.066479806614716e+01, 2.506628277459239e+00)
_B = (-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
      -1.328068155288572e+01, 1.0)
_C = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
      4.374664141464968e+00, 2.938163982698783e+00)
_D = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00, 1.0)
_TAIL = 0.02425


def _normal_quantile(p: np.ndarray) -> np.ndarray:
    """x with Phi(x) = p, for p in (0, 1), float64."""
    q = p - 0.5
    r = q * q
    x = q * np.polyval(_A, r) / np.polyval(_B, r)
    tail = np.minimum(p, 1.0 - p)
    low = tail < _TAIL
    if low.any():
        t = np.sqrt(-2.0 * np.log(tail[low]))
        x[low] = np.copysign(np.polyval(_C, t) / np.polyval(_D, t), q[low])
    return x
