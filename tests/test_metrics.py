"""Tests for mtl.metrics: PSNR / SSIM as BasicSR computes them, on the Y channel or RGB."""
import numpy as np
import pytest
import scipy.signal
import skimage.metrics

from mtl import metrics


def _random_image(seed, shape=(32, 40, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


def _reference_ssim_2d(x, y):
  """SSIM of two HW images written out plainly: explicit 11x11 Gaussian window, valid positions."""
  g = np.exp(-np.arange(-5, 6) ** 2 / (2 * 1.5 ** 2))
  window = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  values = []
  for i in range(x.shape[0] - 10):
    for j in range(x.shape[1] - 10):
      px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
      mx, my = (window * px).sum(), (window * py).sum()
      vx = (window * (px - mx) ** 2).sum()
      vy = (window * (py - my) ** 2).sum()
      cov = (window * (px - mx) * (py - my)).sum()
      values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
  return np.mean(values)


# ---------------------------------------------------------------------------------------------
# Y channel.

@pytest.mark.parametrize("rgb, y", [
    ((255, 255, 255), 235.0),
    ((0, 0, 0), 16.0),
    ((255, 0, 0), 16 + 65.481),
    ((0, 255, 0), 16 + 128.553),
    ((0, 0, 255), 16 + 24.966),
    ((128, 64, 32), 16 + (65.481 * 128 + 128.553 * 64 + 24.966 * 32) / 255),
])
def test_rgb_to_y_known_colours(rgb, y):
  img = np.full((2, 3, 3), rgb, np.uint8)
  np.testing.assert_allclose(metrics.rgb_to_y(img), np.full((2, 3), y), rtol=0, atol=1e-12)


def test_rgb_to_y_is_not_rounded():
  y = metrics.rgb_to_y(np.array([[[1, 2, 3]]], np.uint8))[0, 0]
  assert y != round(y)


# ---------------------------------------------------------------------------------------------
# PSNR.

@pytest.mark.parametrize("offset", [1, 5, 20])
def test_psnr_constant_offset_rgb(offset):
  a = np.full((16, 16, 3), 100, np.uint8)
  b = a + np.uint8(offset)
  assert metrics.psnr(a, b, y_channel=False) == pytest.approx(10 * np.log10(255 ** 2 / offset ** 2))


def test_psnr_constant_offset_y():
  # Adding d to every channel moves Y by d * (65.481 + 128.553 + 24.966) / 255 = d * 219 / 255.
  a = np.full((16, 16, 3), 100, np.uint8)
  b = a + np.uint8(10)
  dy = 10 * 219 / 255
  assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / dy ** 2))


def test_psnr_matches_formula_on_random_images():
  a, b = _random_image(0), _random_image(1)
  mse_rgb = np.mean((a.astype(np.float64) - b) ** 2)
  assert metrics.psnr(a, b, y_channel=False) == pytest.approx(10 * np.log10(255 ** 2 / mse_rgb))
  mse_y = np.mean((metrics.rgb_to_y(a) - metrics.rgb_to_y(b)) ** 2)
  assert metrics.psnr(a, b) == pytest.approx(10 * np.log10(255 ** 2 / mse_y))


def test_psnr_identical_is_inf():
  a = _random_image(2)
  assert metrics.psnr(a, a) == float("inf")
  assert metrics.psnr(a, a.astype(np.float32), y_channel=False) == float("inf")


def test_psnr_crop_border_ignores_the_border():
  a = _random_image(3)
  b = a.copy()
  b[:2] = 0            # damage only a 2-pixel frame
  b[-2:] = 255
  b[:, :2] = 7
  b[:, -2:] = 9
  assert metrics.psnr(a, b, crop_border=2) == float("inf")
  assert metrics.psnr(a, b, crop_border=1) < 100
  # Cropping is exactly slicing every edge.
  c = _random_image(4)
  assert metrics.psnr(a, c, crop_border=3) == pytest.approx(metrics.psnr(a[3:-3, 3:-3], c[3:-3, 3:-3]))


def test_uint8_and_float_inputs_agree():
  a, b = _random_image(5), _random_image(6)
  assert metrics.psnr(a, b) == metrics.psnr(a.astype(np.float32), b.astype(np.float64))
  assert metrics.ssim(a, b) == pytest.approx(metrics.ssim(a.astype(np.float32), b), abs=1e-12)


def test_grayscale_is_scored_as_is():
  a, b = _random_image(7, (20, 20)), _random_image(8, (20, 20))
  expected = 10 * np.log10(255 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))
  assert metrics.psnr(a, b) == pytest.approx(expected)
  assert metrics.psnr(a[..., None], b[..., None]) == pytest.approx(expected)


def test_an_image_is_grey_only_where_every_channel_is_equal():
  grey = np.repeat(_random_image(7, (20, 20))[..., None], 3, axis=-1)
  assert metrics.is_grey(grey) and metrics.is_grey(grey[..., 0])
  blue = grey.copy()
  blue[5, 5, 2] ^= 1  # red and green still equal everywhere
  assert not metrics.is_grey(blue)


@pytest.mark.parametrize("fn", [metrics.psnr, metrics.ssim])
def test_bad_inputs_raise(fn):
  a = _random_image(9, (20, 20, 3))
  with pytest.raises(ValueError, match="same shape"):
    fn(a, a[:-1])
  with pytest.raises(ValueError, match="crop_border"):
    fn(a, a, crop_border=10)
  with pytest.raises(ValueError, match="crop_border"):
    fn(a, a, crop_border=-1)


# ---------------------------------------------------------------------------------------------
# SSIM.

def test_ssim_identical_is_one():
  a = _random_image(10)
  assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
  assert metrics.ssim(a, a, y_channel=False) == pytest.approx(1.0, abs=1e-12)


def test_ssim_matches_explicit_window_loops():
  a, b = _random_image(11, (18, 21, 3)), _random_image(12, (18, 21, 3))
  a = a.astype(np.float64)
  b = np.clip(a + np.random.default_rng(0).normal(0, 20, a.shape), 0, 255)  # related images
  ya, yb = metrics.rgb_to_y(a), metrics.rgb_to_y(b)
  assert metrics.ssim(a, b) == pytest.approx(_reference_ssim_2d(ya, yb), abs=1e-10)
  per_channel = [_reference_ssim_2d(a[..., c], b[..., c]) for c in range(3)]
  assert metrics.ssim(a, b, y_channel=False) == pytest.approx(np.mean(per_channel), abs=1e-10)


def test_ssim_matches_scipy_valid_filtering_with_crop():
  a = _random_image(13, (40, 36, 3)).astype(np.float64)
  b = np.clip(a + np.random.default_rng(1).normal(0, 10, a.shape), 0, 255)
  g = np.exp(-np.arange(-5, 6) ** 2 / 4.5)
  window = np.outer(g, g) / np.outer(g, g).sum()
  x, y = metrics.rgb_to_y(a)[4:-4, 4:-4], metrics.rgb_to_y(b)[4:-4, 4:-4]
  f = lambda z: scipy.signal.correlate2d(z, window, mode="valid")
  mx, my = f(x), f(y)
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  s = ((2 * mx * my + c1) * (2 * (f(x * y) - mx * my) + c2)) / (
      (mx ** 2 + my ** 2 + c1) * (f(x * x) - mx ** 2 + f(y * y) - my ** 2 + c2))
  assert metrics.ssim(a, b, crop_border=4) == pytest.approx(s.mean(), abs=1e-10)


def test_ssim_matches_skimage_on_the_valid_region():
  # skimage filters the whole image with reflected borders and then averages the map without
  # its 5-pixel frame; those interior values use no padding, so they are exactly our 'valid'
  # SSIM map (same 11-tap Gaussian: truncate 3.5 * sigma 1.5 -> radius 5). Equal to rounding.
  a = _random_image(14, (48, 40, 3)).astype(np.float64)
  b = np.clip(a + np.random.default_rng(2).normal(0, 15, a.shape), 0, 255)
  kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
  ours_y = metrics.ssim(a, b)
  theirs_y = skimage.metrics.structural_similarity(metrics.rgb_to_y(a), metrics.rgb_to_y(b), **kw)
  assert ours_y == pytest.approx(theirs_y, abs=1e-9)
  ours_rgb = metrics.ssim(a, b, y_channel=False)
  theirs_rgb = skimage.metrics.structural_similarity(a, b, channel_axis=-1, **kw)
  assert ours_rgb == pytest.approx(theirs_rgb, abs=1e-9)


def test_ssim_decreases_with_noise():
  a = _random_image(15, (40, 40, 3)).astype(np.float64)
  rng = np.random.default_rng(3)
  scores = [metrics.ssim(a, np.clip(a + rng.normal(0, s, a.shape), 0, 255)) for s in (2, 10, 40)]
  assert 1 > scores[0] > scores[1] > scores[2] > 0


def test_ssim_too_small_raises():
  a = _random_image(16, (14, 14, 3))
  with pytest.raises(ValueError, match="SSIM needs at least 11x11"):
    metrics.ssim(a, a, crop_border=2)
