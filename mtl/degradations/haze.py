"""Haze: the atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d), over a depth proxy."""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtl.degradations.common import _HIGHEST, config_range, draw, per_sample
from mtl.degradations.noise import LUMA


def default_haze_config():
  return ml_collections.ConfigDict(dict(
      beta=(0.6, 2.5),          # scattering coefficient per unit of the depth proxy d in [0, 1]
      airlight=(0.7, 1.0),      # A as a fraction of 255 (RESIDE's OTS draws A in [0.8, 1.0])
      position_weight=(0.3, 0.7),  # share of the image-row term in d (the rest: luminance)
      position_span=256,        # pixels over which the row term runs from 1 (top) to 0 (bottom)
      luminance_sigma=8.0))     # Gaussian blur of the luminance term, pixels


class _HazeRanges(NamedTuple):
  beta: tuple
  airlight: tuple
  position_weight: tuple
  position_span: float
  luminance_sigma: float

  @classmethod
  def from_config(cls, c):
    span, sigma = float(c.position_span), float(c.luminance_sigma)
    if not span >= 1 or not sigma > 0:
      raise ValueError(f"degrade.haze.position_span={c.position_span} must be >= 1 pixel and "
                       f"luminance_sigma={c.luminance_sigma} > 0")
    return cls(config_range(c, "beta", 0.0, 50.0, "haze"), config_range(c, "airlight", 0.0, 1.0, "haze"),
               config_range(c, "position_weight", 0.0, 1.0, "haze"), span, sigma)


@functools.lru_cache(maxsize=256)
def gaussian_blur_matrix(size, sigma):
  """(size, size) float64 matrix of a 1-D Gaussian blur with symmetric borders; rows sum to 1."""
  radius = int(math.ceil(3.0 * sigma))
  offsets = np.arange(-radius, radius + 1)
  weights = np.exp(-offsets ** 2 / (2.0 * sigma ** 2))
  weights /= weights.sum()
  matrix = np.zeros((size, size))
  for i in range(size):
    source = np.mod(i + offsets, 2 * size)   # mirror including the edge pixel, as elsewhere
    source = np.where(source < size, source, 2 * size - 1 - source)
    np.add.at(matrix[i], source, weights)
  matrix.setflags(write=False)
  return matrix


def depth_proxy(key, hr, ranges):
  """(H, W) relative depth in [0, 1] of one (H, W, 3) image, without a depth sensor.

  d = w * row + (1 - w) * blurred luminance / 255. Row: outdoor scenes recede towards the
  top (ground near the bottom, horizon and sky near the top), so d falls linearly from the top
  row over `position_span` pixels; a crop smaller than the span sees a random slice of that
  ramp, so crops and whole images share its slope. Luminance: bright, hazy-looking regions
  (sky, distant surfaces washed out by airlight) are far, the observation behind the dark
  channel prior (He et al. 2009). Blurring it keeps the transmission smooth, so object
  texture does not print into the haze. w is drawn per image from `position_weight`.
  """
  h, w = hr.shape[:2]
  k_weight, k_offset = jax.random.split(key)
  rows = jnp.asarray(gaussian_blur_matrix(h, ranges.luminance_sigma), jnp.float32)
  cols = jnp.asarray(gaussian_blur_matrix(w, ranges.luminance_sigma), jnp.float32)
  lum = jnp.einsum("hwc,c->hw", hr, jnp.asarray(LUMA, jnp.float32), precision=_HIGHEST) / 255.0
  lum = jnp.einsum("oh,hw,pw->op", rows, lum, cols, precision=_HIGHEST)
  span = min(1.0, h / ranges.position_span)   # the fraction of the ramp this image covers
  top = 1.0 - jax.random.uniform(k_offset, (), jnp.float32, 0.0, 1.0 - span)
  row = top - span * jnp.arange(h, dtype=jnp.float32)[:, None] / max(h - 1, 1)
  weight = draw(k_weight, ranges.position_weight)
  return jnp.clip(weight * row + (1.0 - weight) * lum, 0.0, 1.0)   # (H, 1) row broadcasts


def haze_parameters(key, hr, haze_cfg):
  """(transmission (H, W) in [exp(-beta), 1] within (0, 1], airlight A in [0, 1]) of one image."""
  return _haze_parameters(key, jnp.asarray(hr, jnp.float32), _HazeRanges.from_config(haze_cfg))


@functools.partial(jax.jit, static_argnums=2)
def _haze_parameters(key, hr, ranges):
  k_depth, k_beta, k_air = jax.random.split(key, 3)
  depth = depth_proxy(k_depth, hr, ranges)
  return jnp.exp(-draw(k_beta, ranges.beta) * depth), draw(k_air, ranges.airlight)


def add_haze(key, hr, haze_cfg):
  """I = J t + 255 A (1 - t) for a (B, H, W, 3) batch J in [0, 255]; per-sample t and A."""
  ranges = _HazeRanges.from_config(haze_cfg)
  def one(k, x):
    t, a = _haze_parameters(k, x, ranges)
    return x * t[..., None] + 255.0 * a * (1.0 - t[..., None])
  return jnp.clip(per_sample(one, key, hr), 0.0, 255.0)
