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
import jax
import jax.numpy as jnp

from mtl.degradations.blur import blur, blur_kernel, convolve, default_blur_config
from mtl.degradations.common import block
from mtl.degradations.haze import (add_haze, default_haze_config, depth_proxy,
                                   gaussian_blur_matrix, haze_parameters)
from mtl.degradations.jpeg import (JPEG_CHROMA_TABLE, JPEG_LUMA_TABLE, jpeg,
                                   quantization_table)
from mtl.degradations.lowlight import darken, default_lowlight_config
from mtl.degradations.noise import LUMA, add_noise, to_gray
from mtl.degradations.rain import _streak_kernel, add_rain, default_rain_config, rain_layer
from mtl.degradations.resize import bicubic_weights, imresize, output_size


def check_config(cfg):
  """Refuse (ValueError naming the field) a `degrade` block's bad range before any work: each
  kind's ranges are otherwise read when its first batch is traced."""
  from mtl.degradations.blur import _BlurRanges
  from mtl.degradations.haze import _HazeRanges
  from mtl.degradations.lowlight import _LowlightRanges
  from mtl.degradations.rain import _RainRanges
  for kind, ranges in (("rain", _RainRanges), ("haze", _HazeRanges), ("blur", _BlurRanges),
                       ("lowlight", _LowlightRanges)):
    if kind in cfg:  # a config saved before a kind existed has no block for it
      ranges.from_config(cfg[kind])


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
    inputs = add_haze(key, hr, block(cfg, "haze", default_haze_config))
  elif spec.kind == "deblur":
    inputs = blur(key, hr, block(cfg, "blur", default_blur_config))
  elif spec.kind == "lowlight":
    inputs = darken(key, hr, block(cfg, "lowlight", default_lowlight_config))
  elif spec.kind == "jpeg":
    inputs = jpeg(hr, spec.quality)
  else:
    raise ValueError(f"unknown task kind {spec.kind!r}; valid kinds: denoise, sr, derain, "
                     "dehaze, deblur, lowlight, jpeg")
  return inputs, hr
