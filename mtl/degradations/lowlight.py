"""Low light: gamma/exposure darkening with signal-dependent (Poisson-Gaussian) noise."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from mtl.degradations.common import config_range, draw, per_sample


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
    return cls(config_range(c, "gamma", 0.1, 10.0, "lowlight"), config_range(c, "exposure", 0.0, 1.0, "lowlight"),
               config_range(c, "shot", 0.0, 1.0, "lowlight"), config_range(c, "read", 0.0, 1.0, "lowlight"))


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
    mean = draw(k_exposure, ranges.exposure) * (x / 255.0) ** draw(k_gamma, ranges.gamma)
    std = jnp.sqrt(draw(k_shot, ranges.shot) * mean + draw(k_read, ranges.read) ** 2)
    return 255.0 * (mean + std * jax.random.normal(k_noise, x.shape, jnp.float32))
  return jnp.clip(per_sample(one, key, hr), 0.0, 255.0)
