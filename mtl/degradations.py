"""Degradations that turn clean HR crops into task inputs, on the accelerator inside the train step.

Pure JAX, jit-able, deterministic given a PRNG key; every sample of a batch gets its own key.
Images are float32 NHWC in [0, 255].

  denoise  clip(hr + sigma * N(0, 1), 0, 255)                  (optionally rounded)
  sr       clip(round(MATLAB imresize(hr, 1 / scale, 'bicubic')), 0, 255)
  derain   clip(hr + streak layer, 0, 255): a procedural layer (JORDER's O = B + S), or real
           RainTrainL streak crops when the data pipeline supplies them.

MATLAB's bicubic resize (antialiased when downscaling, symmetric borders) is two small
matrices, one per spatial axis, built on the host once per size and applied as matmuls:
`jax.image.resize` differs at the borders.
"""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------
# MATLAB imresize, bicubic.

def _cubic(x):
  """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
  ax = np.abs(x)
  near = 1.5 * ax ** 3 - 2.5 * ax ** 2 + 1.0
  far = -0.5 * ax ** 3 + 2.5 * ax ** 2 - 4.0 * ax + 2.0
  return np.where(ax <= 1.0, near, np.where(ax <= 2.0, far, 0.0))


def output_size(in_size, scale):
  """MATLAB's output length ceil(in * scale), immune to float noise such as 144 * (1/3)."""
  return int(math.ceil(round(in_size * scale, 9)))


@functools.lru_cache(maxsize=256)
def bicubic_weights(in_size, out_size, scale):
  """(out_size, in_size) float64 matrix of MATLAB imresize's bicubic weights along one axis.

  Downscaling (scale < 1) antialiases: the kernel is stretched to width 4 / scale and its
  weights become scale * cubic(scale * d). Borders are MATLAB's symmetric padding (mirror
  including the edge pixel), folded into the matrix. Rows sum to one. Read-only (cached).
  """
  if in_size < 1 or out_size < 1 or not scale > 0:
    raise ValueError(f"bicubic_weights needs in_size, out_size >= 1 and scale > 0, "
                     f"got {in_size}, {out_size}, {scale}")
  if scale < 1:
    kernel, support = (lambda d: scale * _cubic(scale * d)), 4.0 / scale
  else:
    kernel, support = _cubic, 4.0
  x = np.arange(1, out_size + 1, dtype=np.float64)   # 1-based output coordinates, as MATLAB
  u = x / scale + 0.5 * (1.0 - 1.0 / scale)          # where each output samples the input
  left = np.floor(u - support / 2.0)
  taps = int(math.ceil(support)) + 2
  indices = left[:, None] + np.arange(taps)           # 1-based input indices, may fall outside
  weights = kernel(u[:, None] - indices)
  weights /= weights.sum(axis=1, keepdims=True)
  # Symmetric padding: the input repeats as [1..n, n..1], so index i reads aux[(i - 1) mod 2n].
  period = np.mod(indices - 1, 2 * in_size).astype(np.int64)
  source = np.where(period < in_size, period, 2 * in_size - 1 - period)
  matrix = np.zeros((out_size, in_size))
  rows = np.broadcast_to(np.arange(out_size)[:, None], source.shape)
  np.add.at(matrix, (rows, source), weights)
  matrix.setflags(write=False)
  return matrix


@functools.partial(jax.jit, static_argnums=1)  # one compile per shape, also when called eagerly
def imresize(image, scale):
  """MATLAB `imresize(image, scale, 'bicubic')` of float (..., H, W, C) data; unrounded float32.

  The output is ceil(H * scale) x ceil(W * scale); leading axes are batch axes.
  """
  image = jnp.asarray(image, jnp.float32)
  if image.ndim < 3:
    raise ValueError(f"imresize needs an HWC or NHWC image, got shape {image.shape}")
  scale = float(scale)
  h, w = image.shape[-3:-1]
  rows = jnp.asarray(bicubic_weights(h, output_size(h, scale), scale), jnp.float32)
  cols = jnp.asarray(bicubic_weights(w, output_size(w, scale), scale), jnp.float32)
  out = jnp.einsum("oh,...hwc->...owc", rows, image, precision=_HIGHEST)
  return jnp.einsum("pw,...owc->...opc", cols, out, precision=_HIGHEST)


# ----------------------------------------------------------------------------------------------
# Noise.

@functools.partial(jax.jit, static_argnames="quantize")
def add_noise(key, hr, sigma, quantize=False):
  """clip(hr + sigma * N(0, 1), 0, 255) in float32; `quantize` also rounds to integers."""
  hr = jnp.asarray(hr, jnp.float32)
  noisy = hr + sigma * jax.random.normal(key, hr.shape, jnp.float32)
  if quantize:
    noisy = jnp.round(noisy)
  return jnp.clip(noisy, 0.0, 255.0)


# ----------------------------------------------------------------------------------------------
# Rain.

def default_rain_config():
  """Light rain: a few visible streaks of random length, slant and brightness per image."""
  return ml_collections.ConfigDict(dict(
      density=(0.004, 0.012),   # fraction of pixels that seed a drop
      length=(8, 24),           # streak length in pixels
      angle=(-30.0, 30.0),      # degrees from vertical; positive leans the top to the right
      intensity=(0.4, 0.9),     # a full-brightness drop peaks at 255 * intensity
      width=0.6,                # Gaussian sigma across the streak, pixels
      streak_dir=""))           # '' -> procedural; else a folder of rainstreak-*.png (data pipeline)


def _range(rain_cfg, name, low, high):
  """A (lo, hi) config range as floats, checked against [low, high]."""
  lo, hi = (float(v) for v in rain_cfg[name])
  if not low <= lo <= hi <= high:
    raise ValueError(f"rain.{name}={tuple(rain_cfg[name])} must be (lo, hi) with "
                     f"{low} <= lo <= hi <= {high}")
  return lo, hi


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
    return cls(density=_range(rain_cfg, "density", 0.0, 1.0),
               length=_range(rain_cfg, "length", 1.0, 1024.0),
               angle=_range(rain_cfg, "angle", -90.0, 90.0),
               intensity=_range(rain_cfg, "intensity", 0.0, 1.0),
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
  """A (height, width) float32 streak layer in [0, 255 * intensity] (REFERENCE section 5).

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
    layers = jax.vmap(lambda k: rain_layer(k, h, w, rain_cfg))(keys)
  else:
    layers = jnp.asarray(streaks, jnp.float32)
    if layers.shape != (b, h, w):
      raise ValueError(f"streaks must have shape {(b, h, w)} to match the batch, got {layers.shape}")
  return jnp.clip(hr + layers[..., None], 0.0, 255.0)


# ----------------------------------------------------------------------------------------------
# One task's degradation.

def degrade(spec, key, hr, cfg, streaks=None):
  """(inputs, targets) float32 for task `spec` from a (B, h, w, 3) batch of clean crops in [0, 255].

  `cfg` is the config's `degrade` block. SR inputs are (B, h / s, w / s, 3), rounded and
  clipped as a saved LR image would be; the other tasks keep the size. Targets are `hr`.
  """
  hr = jnp.asarray(hr, jnp.float32)
  if hr.ndim != 4:
    raise ValueError(f"degrade needs a (B, h, w, C) batch, got shape {hr.shape}")
  if streaks is not None and spec.kind != "derain":
    raise ValueError(f"streaks given for task {spec.name!r}; only derain tasks use them")
  if spec.kind == "denoise":
    keys = jax.random.split(key, hr.shape[0])
    noise = lambda k, x: add_noise(k, x, spec.sigma, bool(cfg.noise_quantize))
    inputs = jax.vmap(noise)(keys, hr)
  elif spec.kind == "sr":
    h, w = hr.shape[1:3]
    if h % spec.scale or w % spec.scale:
      raise ValueError(f"task {spec.name!r} needs HR sides divisible by {spec.scale}, got {h}x{w}")
    inputs = jnp.clip(jnp.round(imresize(hr, 1.0 / spec.scale)), 0.0, 255.0)
  elif spec.kind == "derain":
    inputs = add_rain(key, hr, cfg.rain, streaks)
  else:
    raise ValueError(f"unknown task kind {spec.kind!r}; valid kinds: denoise, sr, derain")
  return inputs, hr
