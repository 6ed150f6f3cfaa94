"""Rain streaks: a procedural, seedable layer (the rain model O = B + S of Yang et al. 2017), or
real streak layers (RainTrainL) supplied by the data pipeline."""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from mtl import sharding
from mtl.degradations.common import config_range


def default_rain_config():
  """Light rain: a few visible streaks of random length, slant and brightness per image."""
  return ml_collections.ConfigDict(dict(
      density=(0.004, 0.012),   # fraction of pixels that seed a drop
      length=(8, 24),           # streak length in pixels
      angle=(-30.0, 30.0),      # degrees from vertical; positive leans the top to the right
      intensity=(0.4, 0.9),     # a full-brightness drop peaks at 255 * intensity
      width=0.6,                # Gaussian sigma across the streak, pixels
      streak_dir=""))           # '' -> procedural; else a folder of rainstreak-*.png (data pipeline)


class _RainRanges(NamedTuple):
  """The validated, static (hashable) parameters of the procedural recipe."""
  density: tuple
  length: tuple
  angle: tuple
  intensity: tuple
  width: float

  @classmethod
  def from_config(cls, rain_cfg):
    width = float(rain_cfg.width)
    if not width > 0:
      raise ValueError(f"rain.width={rain_cfg.width} must be a Gaussian sigma > 0 (pixels)")
    return cls(density=config_range(rain_cfg, "density", 0.0, 1.0),
               length=config_range(rain_cfg, "length", 1.0, 1024.0),
               angle=config_range(rain_cfg, "angle", -90.0, 90.0),
               intensity=config_range(rain_cfg, "intensity", 0.0, 1.0),
               width=width)


def _streak_kernel(length, angle_deg, sigma, radius):
  """(2r+1, 2r+1) image of one drop's streak: a segment of `length` at `angle_deg` from vertical,
  convolved with an isotropic Gaussian of `sigma` (in closed form), peak 1.

  `radius` is static (from the largest allowed length) so the shape never depends on the draw.
  """
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  dy, dx = offsets[:, None], offsets[None, :]
  theta = jnp.deg2rad(angle_deg)
  along = dy * jnp.cos(theta) - dx * jnp.sin(theta)   # rows point down: positive theta = top right
  across = dy * jnp.sin(theta) + dx * jnp.cos(theta)
  half, root2s = length / 2.0, math.sqrt(2.0) * sigma
  segment = 0.5 * (jax.scipy.special.erf((half - along) / root2s)
                   + jax.scipy.special.erf((half + along) / root2s))
  kernel = segment * jnp.exp(-across ** 2 / (2.0 * sigma ** 2))
  return kernel / kernel.max()


def rain_layer(key, height, width, rain_cfg):
  """A (height, width) float32 streak layer in [0, 255 * intensity] (rain model of Yang et al. 2017).

  Sparse uniform noise (pixels above 1 - density, i.e. the top `density` fraction in
  expectation, seed drops of random brightness),
  blurred by one slanted streak kernel, scaled so that a full-brightness drop peaks at
  255 * intensity, and clipped there where streaks overlap. Length, angle, density and
  intensity are drawn per call from `key` within the config ranges. Drops are seeded on a
  canvas larger by the kernel radius, so streaks enter from outside the frame as often as inside.
  """
  return _rain_layer(key, int(height), int(width), _RainRanges.from_config(rain_cfg))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))  # one compile, also when called eagerly
def _rain_layer(key, height, width, ranges):
  """rain_layer with the config already validated into hashable `_RainRanges`."""
  radius = int(math.ceil(ranges.length[1] / 2.0 + 3.0 * ranges.width))
  k_length, k_angle, k_density, k_intensity, k_drops = jax.random.split(key, 5)
  draw = lambda k, bounds: jax.random.uniform(k, (), jnp.float32, *bounds)
  length, angle = draw(k_length, ranges.length), draw(k_angle, ranges.angle)
  density, intensity = draw(k_density, ranges.density), draw(k_intensity, ranges.intensity)

  canvas = jax.random.uniform(k_drops, (height + 2 * radius, width + 2 * radius), jnp.float32)
  threshold = 1.0 - density
  drops = jnp.where(canvas > threshold, (canvas - threshold) / density, 0.0)  # brightness (0, 1]
  kernel = _streak_kernel(length, angle, ranges.width, radius)
  # The kernel is symmetric under a half turn, so convolution = correlation. FFT, because XLA's CPU
  # convolution with a per-image kernel is ~15x slower; the canvas margin keeps the valid part
  # free of wrap-around.
  spectrum = jnp.fft.rfft2(drops) * jnp.fft.rfft2(kernel, s=drops.shape)
  streaks = jnp.fft.irfft2(spectrum, s=drops.shape)[2 * radius:, 2 * radius:]
  return 255.0 * intensity * jnp.clip(streaks, 0.0, 1.0)


def add_rain(key, hr, rain_cfg, streaks=None):
  """clip(hr + streak layer, 0, 255) for a (B, H, W, 3) batch; one procedural layer per sample,
  or the given (B, H, W) real streak crops (uint8 or float in [0, 255]) instead."""
  hr = jnp.asarray(hr, jnp.float32)
  if hr.ndim != 4:
    raise ValueError(f"add_rain needs a (B, H, W, C) batch, got shape {hr.shape}")
  b, h, w = hr.shape[:3]
  if streaks is None:
    keys = jax.random.split(key, b)
    layers = sharding.per_batch_shard(jax.vmap(lambda k: rain_layer(k, h, w, rain_cfg)), keys)
  else:
    layers = jnp.asarray(streaks, jnp.float32)
    if layers.shape != (b, h, w):
      raise ValueError(f"streaks must have shape {(b, h, w)} to match the batch, got {layers.shape}")
  return jnp.clip(hr + layers[..., None], 0.0, 255.0)
