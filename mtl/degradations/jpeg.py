"""JPEG compression at a quality factor, as libjpeg's baseline round trip (4:2:0), on the device."""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mtl.degradations.common import _HIGHEST


# JPEG.
#
# libjpeg's (IJG, as Pillow uses it through libjpeg-turbo) baseline path, step by step: RGB -> YCbCr
# in its 16-bit fixed point (JFIF, ITU-R BT.601 full range), edge replication to whole 16 x 16 MCUs,
# 4:2:0 chroma by 2 x 2 averaging with its alternating rounding bias, 8 x 8 DCT of level-shifted
# blocks, quantization rounding half away from zero, dequantization, inverse DCT rounded (halves up)
# and clamped to 0..255, 'fancy' (triangular 3/4-1/4) chroma upsampling in its integer arithmetic,
# and YCbCr -> RGB in its fixed point. The only departure: the DCTs here are exact (float32
# matmuls), libjpeg's default JDCT_ISLOW are 13-bit fixed-point approximations, so a coefficient
# that lands within ~1/q of a rounding boundary can quantize to the neighbouring level, and an
# inverse-DCT pixel can differ by one level.

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
  pixels = jnp.clip(jnp.floor(pixels + 0.5), 0, 255).astype(jnp.int32)  # DESCALE: halves up
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
