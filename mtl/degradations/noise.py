"""Gaussian noise as IPT adds it, and the BT.601 luminance of grey denoising."""
import jax
import jax.numpy as jnp

from mtl.degradations.common import _HIGHEST
from mtl.metrics import LUMA  # one home: scoring takes grey images' plane with the same weights


def add_noise(key, hr, sigma, quantize=False):
  """clip(hr + sigma * N(0, 1), 0, 255) in float32; `quantize` also rounds to integers."""
  hr = jnp.asarray(hr, jnp.float32)
  noisy = hr + sigma * jax.random.normal(key, hr.shape, jnp.float32)
  if quantize:
    noisy = jnp.round(noisy)
  return jnp.clip(noisy, 0.0, 255.0)


def to_gray(hr):
  """The BT.601 luminance of (..., 3) [0, 255] data, rounded as a saved grey image, repeated
  in 3 channels; a grey image (equal channels) is returned unchanged (the weights sum to 1)."""
  y = jnp.round(jnp.einsum("...c,c->...", hr, jnp.asarray(LUMA, jnp.float32), precision=_HIGHEST))
  return jnp.repeat(jnp.clip(y, 0.0, 255.0)[..., None], 3, axis=-1)
