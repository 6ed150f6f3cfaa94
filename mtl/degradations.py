"""Degradations that turn clean HR crops into task inputs, on the accelerator inside the train step.

Pure JAX, jit-able, deterministic given a PRNG key; every sample of a batch gets its own key.
Images are float32 NHWC in [0, 255].

  denoise  clip(hr + sigma * N(0, 1), 0, 255)                  (optionally rounded)
  sr       clip(round(MATLAB imresize(hr, 1 / scale, 'bicubic')), 0, 255)
  derain   clip(hr + streak layer, 0, 255): a procedural layer (JORDER's O = B + S), or real
           RainTrainL streak crops when the data pipeline supplies them.
  dehaze   hr t + 255 A (1 - t), t = exp(-beta d), d a depth proxy in [0, 1] (`add_haze`)
  deblur   hr convolved with a Gaussian or linear-motion kernel summing to 1 (`blur`)
  lowlight 255 (e x^g + sqrt(a e x^g + b^2) N(0, 1)), x = hr / 255 (`darken`)
  jpeg     libjpeg's baseline JPEG round trip at a quality, 4:2:0 (`jpeg`)
Parameter ranges come from the config's `degrade.<kind>` block; each sample of a batch draws
its own parameters from its own key. Real degraded crops (paired data) bypass all of this.

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


def _range(rain_cfg, name, low, high, block="rain"):
  """A (lo, hi) config range as floats, checked against [low, high]."""
  lo, hi = (float(v) for v in rain_cfg[name])
  if not low <= lo <= hi <= high:
    raise ValueError(f"degrade.{block}.{name}={tuple(rain_cfg[name])} must be (lo, hi) with "
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
    layers = jax.vmap(lambda k: rain_layer(k, h, w, rain_cfg))(keys)
  else:
    layers = jnp.asarray(streaks, jnp.float32)
    if layers.shape != (b, h, w):
      raise ValueError(f"streaks must have shape {(b, h, w)} to match the batch, got {layers.shape}")
  return jnp.clip(hr + layers[..., None], 0.0, 255.0)

def _draw(key, bounds):
  """A uniform float32 scalar in the static (lo, hi) `bounds`."""
  return jax.random.uniform(key, (), jnp.float32, *bounds)


def _per_sample(fn, key, hr, *args):
  """fn(key_i, hr_i, *args) over a (B, H, W, C) batch, one key per sample."""
  hr = jnp.asarray(hr, jnp.float32)
  if hr.ndim != 4:
    raise ValueError(f"needs a (B, H, W, C) batch, got shape {hr.shape}")
  return jax.vmap(lambda k, x: fn(k, x, *args))(jax.random.split(key, hr.shape[0]), hr)


def _block(cfg, name, default):
  """The config block `name` of `cfg`, or the default when the config predates it."""
  block = cfg.get(name) if cfg is not None else None
  return default() if block is None else block


# ----------------------------------------------------------------------------------------------
# Grey denoising.

LUMA = (0.299, 0.587, 0.114)   # ITU-R BT.601, as MATLAB's rgb2gray and JPEG's Y


def to_gray(hr):
  """The BT.601 luminance of (..., 3) [0, 255] data, rounded as a saved grey image, repeated
  in 3 channels; a grey image (equal channels) is returned unchanged (the weights sum to 1)."""
  y = jnp.round(jnp.einsum("...c,c->...", hr, jnp.asarray(LUMA, jnp.float32), precision=_HIGHEST))
  return jnp.repeat(jnp.clip(y, 0.0, 255.0)[..., None], 3, axis=-1)


# ----------------------------------------------------------------------------------------------
# Haze: the atmospheric scattering model (Koschmieder; McCartney 1976; as RESIDE, Li et al. 2019).

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
    return cls(_range(c, "beta", 0.0, 50.0, "haze"), _range(c, "airlight", 0.0, 1.0, "haze"),
               _range(c, "position_weight", 0.0, 1.0, "haze"), span, sigma)


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
  weight = _draw(k_weight, ranges.position_weight)
  return jnp.clip(weight * row + (1.0 - weight) * lum, 0.0, 1.0)   # (H, 1) row broadcasts


def haze_parameters(key, hr, haze_cfg):
  """(transmission (H, W) in [exp(-beta), 1] within (0, 1], airlight A in [0, 1]) of one image."""
  return _haze_parameters(key, jnp.asarray(hr, jnp.float32), _HazeRanges.from_config(haze_cfg))


@functools.partial(jax.jit, static_argnums=2)
def _haze_parameters(key, hr, ranges):
  k_depth, k_beta, k_air = jax.random.split(key, 3)
  depth = depth_proxy(k_depth, hr, ranges)
  return jnp.exp(-_draw(k_beta, ranges.beta) * depth), _draw(k_air, ranges.airlight)


def add_haze(key, hr, haze_cfg):
  """I = J t + 255 A (1 - t) for a (B, H, W, 3) batch J in [0, 255]; per-sample t and A."""
  ranges = _HazeRanges.from_config(haze_cfg)
  def one(k, x):
    t, a = _haze_parameters(k, x, ranges)
    return x * t[..., None] + 255.0 * a * (1.0 - t[..., None])
  return jnp.clip(_per_sample(one, key, hr), 0.0, 255.0)


# ----------------------------------------------------------------------------------------------
# Blur.

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
    return cls(size // 2, prob, _range(c, "sigma", 0.1, size, "blur"),
               _range(c, "length", 1.0, size, "blur"), _range(c, "angle", -360.0, 360.0, "blur"))


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
  sigma = _draw(k_sigma, ranges.sigma)
  gaussian = jnp.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma ** 2))
  motion = _streak_kernel(_draw(k_length, ranges.length), _draw(k_angle, ranges.angle), 0.5, r)
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
  return jnp.clip(_per_sample(one, key, hr), 0.0, 255.0)


# ----------------------------------------------------------------------------------------------
# Low light.

def default_lowlight_config():
  return ml_collections.ConfigDict(dict(
      gamma=(1.5, 3.0),         # x -> x^gamma darkens mid-tones more than highlights
      exposure=(0.1, 0.5),      # then a global gain (LOL's low images average ~0.05-0.2)
      shot=(1e-3, 1e-2),        # a: Poisson (signal-dependent) variance per unit signal
      read=(2e-3, 2e-2)))       # b: Gaussian read-noise standard deviation


class _LowlightRanges(NamedTuple):
  gamma: tuple
  exposure: tuple
  shot: tuple
  read: tuple

  @classmethod
  def from_config(cls, c):
    return cls(_range(c, "gamma", 0.1, 10.0, "lowlight"), _range(c, "exposure", 0.0, 1.0, "lowlight"),
               _range(c, "shot", 0.0, 1.0, "lowlight"), _range(c, "read", 0.0, 1.0, "lowlight"))


def darken(key, hr, lowlight_cfg):
  """A low-light version of a (B, H, W, 3) batch in [0, 255], per-sample parameters.

  With x = hr / 255, the clean dark signal is m = e * x^g (gamma g, exposure e) and the
  observation is m + sqrt(a m + b^2) N(0, 1): the Gaussian approximation of Poisson-Gaussian
  sensor noise (Foi et al. 2008), so E[y | m] = m and Var[y | m] = a m + b^2 before clipping
  to [0, 1] (and scaling back to [0, 255]). One noise draw per pixel and channel.
  """
  ranges = _LowlightRanges.from_config(lowlight_cfg)
  def one(k, x):
    k_gamma, k_exposure, k_shot, k_read, k_noise = jax.random.split(k, 5)
    mean = _draw(k_exposure, ranges.exposure) * (x / 255.0) ** _draw(k_gamma, ranges.gamma)
    std = jnp.sqrt(_draw(k_shot, ranges.shot) * mean + _draw(k_read, ranges.read) ** 2)
    return 255.0 * (mean + std * jax.random.normal(k_noise, x.shape, jnp.float32))
  return jnp.clip(_per_sample(one, key, hr), 0.0, 255.0)


# ----------------------------------------------------------------------------------------------
# JPEG.
#
# libjpeg's (IJG, as Pillow uses it through libjpeg-turbo) baseline path, step by step: RGB ->
# YCbCr in its 16-bit fixed point (JFIF, ITU-R BT.601 full range), edge replication to whole
# 16 x 16 MCUs, 4:2:0 chroma by 2 x 2 averaging with its alternating rounding bias, 8 x 8
# DCT of level-shifted blocks, quantization rounding half away from zero, dequantization,
# inverse DCT rounded and clamped to 0..255, 'fancy' (triangular 3/4-1/4) chroma upsampling in
# its integer arithmetic, and YCbCr -> RGB in its fixed point. The only departure: the DCTs
# here are exact (float32 matmuls), libjpeg's default JDCT_ISLOW are 13-bit fixed-point
# approximations, so a coefficient that lands within ~1/q of a rounding boundary can quantize
# to the neighbouring level, and an inverse-DCT pixel can differ by one level.

# ITU-T T.81 Annex K tables (natural order), as libjpeg's jcparam.c.
JPEG_LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)
JPEG_CHROMA_TABLE = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99]).reshape(8, 8)


def quantization_table(base, quality):
  """IJG `jpeg_set_quality(quality, force_baseline=TRUE)`: the base table scaled by
  5000 / q (q < 50) or 200 - 2 q percent, rounded, clamped to 1..255."""
  quality = int(quality)
  if not 1 <= quality <= 100:
    raise ValueError(f"JPEG quality={quality} must be in 1..100")
  scale = 5000 // quality if quality < 50 else 200 - 2 * quality
  return np.clip((np.asarray(base, np.int64) * scale + 50) // 100, 1, 255)


def _dct_matrix():
  """Orthonormal 8-point DCT-II: C[k, n] = c(k) cos((2n + 1) k pi / 16); JPEG's 2-D FDCT is C B C^T."""
  k, n = np.arange(8)[:, None], np.arange(8)[None, :]
  matrix = np.cos((2 * n + 1) * k * np.pi / 16.0) * np.where(k == 0, np.sqrt(1 / 8), 0.5)
  return matrix


def _fixed(x):
  return int(round(x * 65536))   # libjpeg's FIX(x) at SCALEBITS 16


def _rgb_to_ycc(rgb):
  """libjpeg rgb_ycc_convert, int32 (..., 3) -> Y, Cb, Cr int32 planes."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  half, offset = 1 << 15, 128 << 16
  y = (_fixed(0.299) * r + _fixed(0.587) * g + _fixed(0.114) * b + half) >> 16
  cb = (-_fixed(0.16874) * r - _fixed(0.33126) * g + _fixed(0.5) * b + offset + half - 1) >> 16
  cr = (_fixed(0.5) * r - _fixed(0.41869) * g - _fixed(0.08131) * b + offset + half - 1) >> 16
  return y, cb, cr


def _ycc_to_rgb(y, cb, cr):
  """libjpeg ycc_rgb_convert (its lookup tables in closed form), clamped to 0..255."""
  half = 1 << 15
  cb, cr = cb - 128, cr - 128
  r = y + ((_fixed(1.402) * cr + half) >> 16)
  g = y + ((-_fixed(0.34414) * cb - _fixed(0.71414) * cr + half) >> 16)
  b = y + ((_fixed(1.772) * cb + half) >> 16)
  return jnp.clip(jnp.stack([r, g, b], axis=-1), 0, 255)


def _downsample_420(plane):
  """libjpeg h2v2_downsample: (2x2 sum + bias) >> 2, bias 1, 2, 1, 2 ... along each row."""
  h, w = plane.shape
  sums = plane.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
  bias = 1 + (jnp.arange(w // 2) % 2)
  return (sums + bias) >> 2


def _upsample_420(plane, height, width):
  """libjpeg h2v2_fancy_upsample of the first ceil(h/2) x ceil(w/2) samples, edges replicated:
  column sums 3 * near + far, then (3 * this + neighbour + 8 or 7) >> 4."""
  plane = plane[:(height + 1) // 2, :(width + 1) // 2]
  p = jnp.pad(plane, 1, mode="edge")
  above = 3 * p[1:-1] + p[:-2]                      # output rows 2i
  below = 3 * p[1:-1] + p[2:]                       # output rows 2i + 1
  sums = jnp.stack([above, below], axis=1).reshape(-1, p.shape[1])   # (2 * h2, w2 + 2)
  even = (3 * sums[:, 1:-1] + sums[:, :-2] + 8) >> 4
  odd = (3 * sums[:, 1:-1] + sums[:, 2:] + 7) >> 4
  out = jnp.stack([even, odd], axis=-1).reshape(sums.shape[0], -1)
  return out[:height, :width]


def _block_codec(plane, table):
  """DCT, quantize (round half away from zero), dequantize, IDCT, round, clamp: a whole
  (8m, 8n) int32 plane, block by block; returns int32."""
  h, w = plane.shape
  c = jnp.asarray(_dct_matrix(), jnp.float32)
  blocks = plane.reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).astype(jnp.float32) - 128.0
  coef = jnp.einsum("uk,abkl,vl->abuv", c, blocks, c, precision=_HIGHEST)
  q = jnp.asarray(table, jnp.float32)
  levels = jnp.sign(coef) * jnp.floor(jnp.abs(coef) / q + 0.5)
  pixels = jnp.einsum("uk,abuv,vl->abkl", c, levels * q, c, precision=_HIGHEST) + 128.0
  pixels = jnp.clip(jnp.round(pixels), 0, 255).astype(jnp.int32)
  return pixels.transpose(0, 2, 1, 3).reshape(h, w)


@functools.partial(jax.jit, static_argnums=1)
def jpeg(image, quality):
  """A (H, W, 3) or (B, H, W, 3) image in [0, 255] (rounded to uint8 levels first) after a
  baseline JPEG round trip at IJG `quality` with 4:2:0 chroma, as float32."""
  if image.ndim == 4:
    return jax.vmap(lambda x: jpeg(x, quality))(image)
  luma = quantization_table(JPEG_LUMA_TABLE, quality)
  chroma = quantization_table(JPEG_CHROMA_TABLE, quality)
  h, w = image.shape[:2]
  rgb = jnp.clip(jnp.round(image), 0, 255).astype(jnp.int32)
  rgb = jnp.pad(rgb, ((0, -h % 16), (0, -w % 16), (0, 0)), mode="edge")   # whole MCUs
  y, cb, cr = _rgb_to_ycc(rgb)
  y = _block_codec(y, luma)[:h, :w]
  cb, cr = (_upsample_420(_block_codec(_downsample_420(p), chroma), h, w) for p in (cb, cr))
  return _ycc_to_rgb(y, cb, cr).astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# One task's degradation.

def degrade(spec, key, hr, cfg, streaks=None, given=None):
  """(inputs, targets) float32 for task `spec` from a (B, h, w, 3) batch of clean crops in [0, 255].

  `cfg` is the config's `degrade` block. SR inputs are (B, h / s, w / s, 3), rounded and
  clipped as a saved LR image would be; the other tasks keep the size. Targets are `hr`
  (its luminance for grey denoising). `given`: real degraded crops aligned with `hr` (paired
  data), used as the inputs instead of synthesizing them.
  """
  hr = jnp.asarray(hr, jnp.float32)
  if hr.ndim != 4:
    raise ValueError(f"degrade needs a (B, h, w, C) batch, got shape {hr.shape}")
  if streaks is not None and spec.kind != "derain":
    raise ValueError(f"streaks given for task {spec.name!r}; only derain tasks use them")
  if given is not None:
    given = jnp.asarray(given, jnp.float32)
    if given.shape != hr.shape:
      raise ValueError(f"task {spec.name!r}: real degraded crops {given.shape} must match the "
                       f"clean crops {hr.shape} (paired data serves scale-1 tasks only)")
    return given, hr
  if spec.kind == "denoise":
    keys, quantize = jax.random.split(key, hr.shape[0]), bool(cfg.noise_quantize)
    if spec.gray:   # one draw per pixel on the grey plane, repeated in the 3 channels
      hr = to_gray(hr)
      grey = jax.vmap(lambda k, x: add_noise(k, x[..., :1], spec.sigma, quantize))(keys, hr)
      inputs = jnp.repeat(grey, 3, axis=-1)
    else:
      inputs = jax.vmap(lambda k, x: add_noise(k, x, spec.sigma, quantize))(keys, hr)
  elif spec.kind == "sr":
    h, w = hr.shape[1:3]
    if h % spec.scale or w % spec.scale:
      raise ValueError(f"task {spec.name!r} needs HR sides divisible by {spec.scale}, got {h}x{w}")
    inputs = jnp.clip(jnp.round(imresize(hr, 1.0 / spec.scale)), 0.0, 255.0)
  elif spec.kind == "derain":
    inputs = add_rain(key, hr, cfg.rain, streaks)
  elif spec.kind == "dehaze":
    inputs = add_haze(key, hr, _block(cfg, "haze", default_haze_config))
  elif spec.kind == "deblur":
    inputs = blur(key, hr, _block(cfg, "blur", default_blur_config))
  elif spec.kind == "lowlight":
    inputs = darken(key, hr, _block(cfg, "lowlight", default_lowlight_config))
  elif spec.kind == "jpeg":
    inputs = jpeg(hr, spec.quality)
  else:
    raise ValueError(f"unknown task kind {spec.kind!r}; valid kinds: denoise, sr, derain, "
                     "dehaze, deblur, lowlight, jpeg")
  return inputs, hr
