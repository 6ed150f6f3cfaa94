"""Tests for mtl.degradations: MATLAB bicubic resize, noise, rain, and the per-task degrade."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl import degradations, tasks


def _cfg(**rain_overrides):
  """A `degrade` config block as the experiments write it."""
  import ml_collections
  cfg = ml_collections.ConfigDict()
  cfg.noise_quantize = False
  cfg.rain = degradations.default_rain_config()
  cfg.rain.update(rain_overrides)
  return cfg


def _hr(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


# ---------------------------------------------------------------------------------------------
# An independent MATLAB imresize(..., 'bicubic'), written out per output pixel.

def _matlab_cubic(x):
  x = abs(x)
  if x <= 1:
    return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
  if x <= 2:
    return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
  return 0.0


def _mirror(i, n):
  """1-based index i reflected into 1..n, the edge pixel repeated (MATLAB 'symmetric')."""
  while i < 1 or i > n:
    i = 1 - i if i < 1 else 2 * n + 1 - i
  return i


def _contributions(n, x, scale):
  """[(0-based input index, weight)] of 1-based output pixel x along an axis of length n."""
  if scale < 1:  # antialiasing: the kernel stretched by 1/scale
    kernel, width = (lambda d: scale * _matlab_cubic(scale * d)), 4 / scale
  else:
    kernel, width = _matlab_cubic, 4
  u = x / scale + 0.5 * (1 - 1 / scale)
  first = math.floor(u - width / 2)
  taps = [(j, kernel(u - j)) for j in range(first, first + math.ceil(width) + 2)]
  total = sum(w for _, w in taps)
  return [(_mirror(j, n) - 1, w / total) for j, w in taps]


def _reference_imresize(img, scale):
  h, w, c = img.shape
  out = np.zeros((math.ceil(h * scale), math.ceil(w * scale), c))
  for y in range(out.shape[0]):
    rows = _contributions(h, y + 1, scale)
    for x in range(out.shape[1]):
      cols = _contributions(w, x + 1, scale)
      out[y, x] = sum(wy * wx * img[sy, sx] for sy, wy in rows for sx, wx in cols)
  return out


# ---------------------------------------------------------------------------------------------
# imresize.

@pytest.mark.parametrize("h, w, scale", [
    (13, 17, 1 / 2), (24, 20, 1 / 2), (15, 21, 1 / 3), (12, 18, 1 / 3), (17, 23, 1 / 4),
    (24, 32, 1 / 4), (5, 6, 1 / 4), (7, 9, 2), (5, 6, 3), (3, 4, 4), (8, 8, 1.5)])
def test_imresize_matches_matlab_formula(h, w, scale):
  img = np.random.default_rng(h * w).uniform(0, 255, (h, w, 3))
  ours = np.asarray(degradations.imresize(img, scale))
  expected = _reference_imresize(img, scale)
  assert ours.shape == (math.ceil(h * scale), math.ceil(w * scale), 3)
  assert ours.dtype == np.float32
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("n_in, n_out, scale", [(13, 7, 1 / 2), (5, 2, 1 / 4), (6, 18, 3)])
def test_bicubic_weights_rows(n_in, n_out, scale):
  m = degradations.bicubic_weights(n_in, n_out, scale)
  assert m.shape == (n_out, n_in)
  np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-12)
  for x in range(n_out):
    expected = np.zeros(n_in)
    for j, wgt in _contributions(n_in, x + 1, scale):
      expected[j] += wgt
    np.testing.assert_allclose(m[x], expected, atol=1e-12)
  assert not m.flags.writeable
  assert degradations.bicubic_weights(n_in, n_out, scale) is m  # cached


def test_imresize_batch_axes_and_output_sizes():
  img = np.random.default_rng(0).uniform(0, 255, (2, 3, 144, 150, 3)).astype(np.float32)
  out = degradations.imresize(img, 1 / 3)
  assert out.shape == (2, 3, 48, 50, 3)
  np.testing.assert_allclose(out[1, 2], degradations.imresize(img[1, 2], 1 / 3), atol=1e-4)
  assert degradations.imresize(img[0, 0, :7, :9], 1 / 2).shape == (4, 5, 3)  # ceil
  assert degradations.imresize(img[0, 0, :7, :9], 1 / 4).shape == (2, 3, 3)


def test_imresize_constant_and_ramp():
  const = np.full((19, 22, 3), 117.0)
  for scale in (1 / 2, 1 / 3, 1 / 4, 2):
    np.testing.assert_allclose(degradations.imresize(const, scale), 117.0, atol=1e-4)
  # The kernel is symmetric about u, so a linear ramp is sampled exactly at u away from borders:
  # downscaling by 2 gives u = 2x - 0.5, i.e. the mean of each pixel pair.
  ramp = np.broadcast_to(np.arange(1, 33, dtype=np.float64)[None, :, None], (4, 32, 1))
  out = np.asarray(degradations.imresize(ramp, 1 / 2))[0, :, 0]
  np.testing.assert_allclose(out[2:-2], np.arange(1, 33).reshape(-1, 2).mean(1)[2:-2], atol=1e-4)


def test_imresize_rejects_flat_arrays():
  with pytest.raises(ValueError, match="HWC"):
    degradations.imresize(np.zeros((8, 8)), 0.5)


# ---------------------------------------------------------------------------------------------
# Noise.

def test_add_noise_statistics_and_determinism():
  grey = jnp.full((64, 64, 3), 128.0)
  key = jax.random.key(0)
  noisy = degradations.add_noise(key, grey, 15.0)
  assert abs(float(jnp.std(noisy - grey)) - 15.0) < 0.3   # no clipping at mid-grey, sigma 15
  assert abs(float(jnp.mean(noisy - grey))) < 0.5
  np.testing.assert_array_equal(noisy, degradations.add_noise(key, grey, 15.0))
  assert not np.array_equal(noisy, degradations.add_noise(jax.random.key(1), grey, 15.0))
  quantized = degradations.add_noise(key, grey, 15.0, quantize=True)
  np.testing.assert_array_equal(quantized, jnp.round(quantized))


def test_add_noise_clips():
  noisy = degradations.add_noise(jax.random.key(0), jnp.zeros((64, 64, 3)), 50.0)
  assert float(noisy.min()) == 0.0 and float(noisy.max()) <= 255.0
  assert float(jnp.mean(noisy == 0)) > 0.4


# ---------------------------------------------------------------------------------------------
# Rain.

def test_rain_layer_range_and_determinism():
  cfg = degradations.default_rain_config()
  layer = degradations.rain_layer(jax.random.key(0), 48, 40, cfg)
  assert layer.shape == (48, 40) and layer.dtype == jnp.float32
  assert float(layer.min()) >= 0.0
  assert float(layer.max()) <= 255.0 * cfg.intensity[1] + 1e-3
  assert float(layer.max()) >= 255.0 * cfg.intensity[0] - 1e-3  # some drop reaches full brightness
  np.testing.assert_array_equal(layer, degradations.rain_layer(jax.random.key(0), 48, 40, cfg))
  assert not np.array_equal(layer, degradations.rain_layer(jax.random.key(1), 48, 40, cfg))


def test_rain_coverage_follows_density():
  sparse = degradations.default_rain_config()
  sparse.density = (0.002, 0.002)
  dense = degradations.default_rain_config()
  dense.density = (0.02, 0.02)
  key = jax.random.key(3)
  covered = lambda c: float(jnp.mean(degradations.rain_layer(key, 48, 40, c) > 10))
  assert 0 < covered(sparse) < covered(dense)


def _principal_angle(weights, radius):
  """Degrees from vertical (positive: top to the right) of the main axis of a centred 2-D blob."""
  y, x = np.mgrid[-radius:radius + 1, -radius:radius + 1]
  weights = np.where(x * x + y * y <= radius * radius, weights, 0.0)  # a disc: no corner bias
  moments = np.array([[np.sum(weights * y * y), np.sum(weights * x * y)],
                      [np.sum(weights * x * y), np.sum(weights * x * x)]])
  dy, dx = np.linalg.eigh(moments)[1][:, 1]
  dy, dx = (dy, dx) if dy < 0 else (-dy, -dx)  # point upwards (rows grow downwards)
  return math.degrees(math.atan2(dx, -dy))


@pytest.mark.parametrize("angle", [-20.0, 0.0, 25.0])
def test_streak_kernel_orientation(angle):
  kernel = np.asarray(degradations._streak_kernel(20.0, angle, 0.6, 14), np.float64)
  assert kernel.max() == pytest.approx(1.0)
  assert _principal_angle(kernel, 14) == pytest.approx(angle, abs=0.5)


def test_rain_layer_streak_orientation():
  # Random drops blurred by one kernel: the layer's autocorrelation has the kernel's shape.
  cfg = degradations.default_rain_config()
  cfg.angle, cfg.length = (25.0, 25.0), (20, 20)
  layer = np.asarray(degradations.rain_layer(jax.random.key(7), 128, 128, cfg), np.float64)
  spectrum = np.fft.rfft2(layer - layer.mean(), s=(256, 256))
  autocorr = np.fft.fftshift(np.fft.irfft2(spectrum * np.conj(spectrum), s=(256, 256)))
  centre = np.clip(autocorr[118:139, 118:139], 0, None)
  assert _principal_angle(centre, 10) == pytest.approx(25.0, abs=4.0)


def test_add_rain_adds_nonnegative_streaks():
  hr = _hr((4, 48, 48, 3)).astype(jnp.float32) * 0.1  # <= 25.5: even the brightest streak fits
  rainy = degradations.add_rain(jax.random.key(0), hr, degradations.default_rain_config())
  diff = np.asarray(rainy - hr)
  assert diff.min() >= -1e-5
  np.testing.assert_allclose(diff[..., 0], diff[..., 2], atol=1e-4)  # white: same on R, G, B
  assert all(diff[i].max() > 50 for i in range(4))              # every sample got visible rain
  assert not np.array_equal(diff[0], diff[1])                   # independent per sample


def test_add_rain_uses_given_streaks():
  hr = jnp.full((2, 16, 16, 3), 100.0)
  streaks = np.zeros((2, 16, 16), np.uint8)
  streaks[0, :, 3] = 200
  streaks[1, 5, :] = 40
  rainy = np.asarray(degradations.add_rain(jax.random.key(0), hr, _cfg().rain, streaks))
  np.testing.assert_array_equal(rainy, np.clip(100.0 + streaks[..., None], 0, 255) * np.ones(3))
  with pytest.raises(ValueError, match="streaks must have shape"):
    degradations.add_rain(jax.random.key(0), hr, _cfg().rain, streaks[:, :8])


def test_rain_config_is_validated():
  with pytest.raises(ValueError, match="rain.density"):
    degradations.rain_layer(jax.random.key(0), 8, 8, _cfg(density=(0.5, 0.1)).rain)
  with pytest.raises(ValueError, match="rain.width"):
    degradations.rain_layer(jax.random.key(0), 8, 8, _cfg(width=0.0).rain)


def test_rain_accepts_lists_from_json():
  # evaluate.py rebuilds the config from JSON, which turns the (lo, hi) tuples into lists.
  import json
  import ml_collections
  cfg = degradations.default_rain_config()
  from_json = ml_collections.ConfigDict(json.loads(json.dumps(cfg.to_dict())))
  np.testing.assert_array_equal(degradations.rain_layer(jax.random.key(0), 48, 40, from_json),
                                degradations.rain_layer(jax.random.key(0), 48, 40, cfg))


# ---------------------------------------------------------------------------------------------
# degrade.

@pytest.mark.parametrize("name, hr_side, in_side", [
    ("denoise_30", 48, 48), ("sr_x2", 96, 48), ("sr_x3", 144, 48), ("sr_x4", 192, 48),
    ("derain", 48, 48)])
def test_degrade_shapes_dtypes_and_determinism_under_jit(name, hr_side, in_side):
  spec = tasks.get(name)
  hr = _hr((3, hr_side, hr_side, 3))
  fn = jax.jit(lambda key, x: degradations.degrade(spec, key, x, _cfg()))
  inputs, targets = fn(jax.random.key(0), hr)
  assert inputs.shape == (3, in_side, in_side, 3) and inputs.dtype == jnp.float32
  assert targets.dtype == jnp.float32
  np.testing.assert_array_equal(targets, np.asarray(hr, np.float32))
  assert 0.0 <= float(inputs.min()) and float(inputs.max()) <= 255.0
  np.testing.assert_array_equal(inputs, fn(jax.random.key(0), hr)[0])
  if spec.kind != "sr":  # bicubic downscaling is deterministic by design
    assert not np.array_equal(inputs, fn(jax.random.key(1), hr)[0])


def test_degrade_sr_is_rounded_matlab_bicubic():
  hr = _hr((2, 96, 96, 3), seed=1)
  inputs, _ = degradations.degrade(tasks.get("sr_x2"), jax.random.key(0), hr, _cfg())
  inputs = np.asarray(inputs)
  assert inputs.shape == (2, 48, 48, 3)
  np.testing.assert_array_equal(inputs, np.round(inputs))
  assert inputs.min() >= 0 and inputs.max() <= 255
  expected = np.clip(np.round(_reference_imresize(np.asarray(hr[0], np.float64), 1 / 2)), 0, 255)
  # float32 vs float64 may flip a value sitting at exactly .5: allow a handful of 1-off pixels.
  diff = np.abs(inputs[0] - expected)
  assert diff.max() <= 1 and np.mean(diff > 0) < 1e-3


def test_degrade_denoise_samples_are_independent_and_noise_is_sigma():
  spec = tasks.get("denoise_30")
  hr = jnp.full((4, 48, 48, 3), 128, jnp.uint8)
  inputs, targets = degradations.degrade(spec, jax.random.key(0), hr, _cfg())
  noise = np.asarray(inputs - targets)
  assert not np.array_equal(noise[0], noise[1])
  assert abs(noise.std() - 30.0) < 1.0


def test_degrade_quantize_option():
  cfg = _cfg()
  cfg.noise_quantize = True
  inputs, _ = degradations.degrade(tasks.get("denoise_50"), jax.random.key(0), _hr((2, 16, 16, 3)), cfg)
  np.testing.assert_array_equal(inputs, jnp.round(inputs))


def test_degrade_derain_uses_streaks_when_given():
  spec = tasks.get("derain")
  hr = jnp.full((2, 24, 24, 3), 50, jnp.uint8)
  streaks = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 24, 24)), jnp.uint8)
  fn = jax.jit(lambda key, x, s: degradations.degrade(spec, key, x, _cfg(), streaks=s))
  inputs, _ = fn(jax.random.key(0), hr, streaks)
  np.testing.assert_array_equal(inputs, np.clip(50.0 + np.asarray(streaks, np.float32)[..., None], 0, 255)
                                * np.ones(3))


def test_degrade_bad_inputs():
  with pytest.raises(ValueError, match="divisible by 3"):
    degradations.degrade(tasks.get("sr_x3"), jax.random.key(0), _hr((1, 50, 48, 3)), _cfg())
  with pytest.raises(ValueError, match="only derain"):
    degradations.degrade(tasks.get("sr_x2"), jax.random.key(0), _hr((1, 48, 48, 3)), _cfg(),
                         streaks=np.zeros((1, 48, 48)))
  with pytest.raises(ValueError, match=r"\(B, h, w, C\)"):
    degradations.degrade(tasks.get("derain"), jax.random.key(0), _hr((48, 48, 3)), _cfg())
