"""Blur: Gaussian and linear-motion kernels summing to 1, applied by FFT with mirrored borders."""
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from mtl.degradations.common import config_range, draw, per_sample
from mtl.degradations.rain import _streak_kernel


def default_blur_config():
  return ml_collections.ConfigDict(dict(
      size=21,                  # kernel side (odd); motion lengths must fit in it
      motion_prob=0.5,          # share of linear-motion kernels; the rest are Gaussian
      sigma=(0.8, 3.0),         # Gaussian kernel sigma, pixels
      length=(5.0, 19.0),       # motion length, pixels
      angle=(0.0, 180.0)))      # motion direction, degrees from vertical


class _BlurRanges(NamedTuple):
  radius: int
  motion_prob: float
  sigma: tuple
  length: tuple
  angle: tuple

  @classmethod
  def from_config(cls, c):
    size, prob = int(c.size), float(c.motion_prob)
    if size < 3 or size % 2 == 0:
      raise ValueError(f"degrade.blur.size={c.size} must be an odd kernel side >= 3")
    if not 0.0 <= prob <= 1.0:
      raise ValueError(f"degrade.blur.motion_prob={c.motion_prob} must be in [0, 1]")
    return cls(size // 2, prob, config_range(c, "sigma", 0.1, size, "blur"),
               config_range(c, "length", 1.0, size, "blur"), config_range(c, "angle", -360.0, 360.0, "blur"))


def blur_kernel(key, blur_cfg):
  """One (size, size) float32 blur kernel summing to 1: with probability `motion_prob` a
  linear motion (a segment of random length and angle, anti-aliased with a 0.5 px Gaussian
  profile), else an isotropic Gaussian of random sigma."""
  return _blur_kernel(key, _BlurRanges.from_config(blur_cfg))


@functools.partial(jax.jit, static_argnums=1)
def _blur_kernel(key, ranges):
  k_kind, k_sigma, k_length, k_angle = jax.random.split(key, 4)
  r = ranges.radius
  offsets = jnp.arange(-r, r + 1, dtype=jnp.float32)
  sigma = draw(k_sigma, ranges.sigma)
  gaussian = jnp.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma ** 2))
  motion = _streak_kernel(draw(k_length, ranges.length), draw(k_angle, ranges.angle), 0.5, r)
  kernel = jnp.where(jax.random.uniform(k_kind) < ranges.motion_prob, motion, gaussian)
  return kernel / kernel.sum()


def convolve(image, kernel):
  """(H, W, C) image convolved with a (2r+1, 2r+1) kernel, symmetric borders, same size (FFT)."""
  r = kernel.shape[0] // 2
  h, w = image.shape[:2]
  padded = jnp.pad(image, ((r, r), (r, r), (0, 0)), mode="symmetric")
  shape = padded.shape[:2]
  spectrum = jnp.fft.rfft2(padded, axes=(0, 1)) * jnp.fft.rfft2(kernel, s=shape)[..., None]
  return jnp.fft.irfft2(spectrum, s=shape, axes=(0, 1))[2 * r:2 * r + h, 2 * r:2 * r + w]


def blur(key, hr, blur_cfg):
  """A (B, H, W, 3) batch blurred, each sample by its own kernel, clipped to [0, 255]."""
  ranges = _BlurRanges.from_config(blur_cfg)
  one = lambda k, x: convolve(x, _blur_kernel(k, ranges))
  return jnp.clip(per_sample(one, key, hr), 0.0, 255.0)
