"""Tests for mtl.degradations: MATLAB bicubic resize, noise, rain, haze, blur, low light, JPEG, and
the per-task degrade."""
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


# ---------------------------------------------------------------------------------------------
# The all-in-one kinds: grey denoising, dehaze, deblur, low light, JPEG.

def _photo(shape=(2, 64, 80, 3)):
  """Real photograph crops (astronaut), so haze depth and JPEG see natural content."""
  import skimage.data
  photo = skimage.data.astronaut()
  return jnp.asarray(np.stack([photo[40 * i:40 * i + shape[1], 60 * i:60 * i + shape[2]]
                               for i in range(shape[0])]), jnp.float32)


@pytest.mark.parametrize("name", ["denoise_gray_25", "dehaze", "deblur", "lowlight", "jpeg_20"])
def test_new_kinds_are_deterministic_per_key_under_jit(name):
  spec = tasks.get(name)
  hr = _photo()
  fn = jax.jit(lambda key, x: degradations.degrade(spec, key, x, _cfg()))
  inputs, targets = fn(jax.random.key(0), hr)
  assert inputs.shape == hr.shape and inputs.dtype == jnp.float32
  assert 0.0 <= float(inputs.min()) and float(inputs.max()) <= 255.0
  np.testing.assert_array_equal(inputs, fn(jax.random.key(0), hr)[0])
  if spec.kind == "jpeg":   # a fixed codec: the key plays no part
    np.testing.assert_array_equal(inputs, fn(jax.random.key(1), hr)[0])
  else:
    assert not np.array_equal(inputs, fn(jax.random.key(1), hr)[0])
    assert not np.array_equal(inputs[0], fn(jax.random.key(0), hr[::-1])[0][1])  # per-sample keys
  if not spec.gray:
    np.testing.assert_array_equal(targets, hr)


def test_denoise_gray_target_is_bt601_luma_and_noise_is_shared_by_channels():
  hr = _photo((4, 48, 48, 3))
  inputs, targets = degradations.degrade(tasks.get("denoise_gray_25"), jax.random.key(0), hr, _cfg())
  luma = np.round(np.asarray(hr, np.float64) @ np.array([0.299, 0.587, 0.114]))
  np.testing.assert_allclose(targets, np.repeat(luma[..., None], 3, -1), atol=1)  # .5 ties may flip
  inputs = np.asarray(inputs)
  np.testing.assert_array_equal(inputs[..., 0], inputs[..., 2])
  noise = (inputs - np.asarray(targets))[..., 0]
  inside = (inputs[..., 0] > 0) & (inputs[..., 0] < 255)   # clipping shrinks the tails
  # 9216 draws: the sample std of N(0, 25) has a standard error of ~0.18.
  assert abs(noise[inside].std() - 25.0) < 1.0
  grey = jnp.repeat(hr[..., :1], 3, axis=-1)   # an already grey image is its own target
  np.testing.assert_array_equal(degradations.degrade(tasks.get("denoise_gray_15"), jax.random.key(0),
                                                     grey, _cfg())[1], grey)


def test_haze_transmission_in_unit_interval_and_the_scattering_model():
  cfg = degradations.default_haze_config()
  hr = _photo((1, 64, 80, 3))[0]
  for seed in range(3):
    t, a = degradations.haze_parameters(jax.random.key(seed), hr, cfg)
    t, a = np.asarray(t), float(a)
    assert t.shape == (64, 80)
    assert t.min() >= math.exp(-cfg.beta[1]) - 1e-6 and t.max() <= 1.0 and t.min() > 0.0
    assert cfg.airlight[0] <= a <= cfg.airlight[1]
  t, a = degradations.haze_parameters(jax.random.split(jax.random.key(4), 1)[0], hr, cfg)
  t, a = np.asarray(t), float(a)   # add_haze gives sample i the i-th key split from its key
  hazy = degradations.add_haze(jax.random.key(4), hr[None], cfg)[0]
  expected = np.asarray(hr) * t[..., None] + 255.0 * a * (1.0 - t[..., None])
  np.testing.assert_allclose(hazy, np.clip(expected, 0, 255), atol=1e-3)
  # Haze veils: contrast (std) falls and every pixel moves towards the airlight.
  assert float(hazy.std()) < float(hr.std())
  assert np.all(np.abs(np.asarray(hazy) - 255 * a) <= np.abs(np.asarray(hr) - 255 * a) + 1e-3)


def test_haze_depth_proxy_recedes_upwards_and_is_smooth():
  cfg = degradations.default_haze_config()
  flat = jnp.full((300, 40, 3), 128.0)   # constant luminance: only the row term varies
  t, _ = degradations.haze_parameters(jax.random.key(0), flat, cfg)
  column = np.asarray(t)[:, 0]
  assert np.all(np.diff(column) >= -1e-6) and column[-1] > column[0]   # nearer at the bottom
  # Smooth: on a photograph neighbouring transmissions differ by far less than the pixels do.
  t, _ = degradations.haze_parameters(jax.random.key(0), _photo((1, 64, 80, 3))[0], cfg)
  assert np.abs(np.diff(np.asarray(t), axis=1)).max() < 0.05


def test_blur_kernels_sum_to_one_and_follow_their_parameters():
  cfg = degradations.default_blur_config()
  kinds = set()
  for seed in range(12):
    k = np.asarray(degradations.blur_kernel(jax.random.key(seed), cfg))
    assert k.shape == (21, 21) and k.min() >= 0
    assert abs(k.sum() - 1.0) < 1e-5   # float32 normalization
    kinds.add(bool(np.isclose(k, k.T, atol=1e-6).all() and np.isclose(k, k[::-1]).all()))
  assert kinds == {True, False}   # both Gaussian (fully symmetric) and motion kernels drawn
  gauss = cfg.copy_and_resolve_references()
  gauss.motion_prob, gauss.sigma = 0.0, (2.0, 2.0)
  k = np.asarray(degradations.blur_kernel(jax.random.key(0), gauss), np.float64)
  offsets = np.arange(-10, 11)
  # Truncated at 5 sigma: the second moment is sigma^2 to 1e-4.
  assert abs((k.sum(1) * offsets ** 2).sum() - 4.0) < 1e-3
  motion = cfg.copy_and_resolve_references()
  motion.motion_prob, motion.length, motion.angle = 1.0, (11.0, 11.0), (0.0, 0.0)
  k = np.asarray(degradations.blur_kernel(jax.random.key(0), motion), np.float64)
  assert k[:, 9:12].sum() > 0.99   # vertical motion (0.5 px profile): the mass is on the centre ...
  rows = np.nonzero(k[:, 10] > 0.5 * k[:, 10].max())[0]
  assert rows.max() - rows.min() + 1 == 11   # ... over the motion's length


def test_blur_keeps_constants_and_averages_edges():
  cfg = degradations.default_blur_config()
  flat = jnp.full((2, 32, 40, 3), 77.0)
  np.testing.assert_allclose(degradations.blur(jax.random.key(0), flat, cfg), flat, atol=1e-3)
  step = jnp.concatenate([jnp.zeros((1, 32, 20, 3)), jnp.full((1, 32, 20, 3), 200.0)], axis=2)
  out = np.asarray(degradations.blur(jax.random.key(3), step, cfg))
  assert out.min() >= -1e-3 and out.max() <= 200 + 1e-3
  assert np.abs(np.diff(out, axis=2)).max() < 200   # the edge is spread out


def test_lowlight_is_darker_with_poisson_gaussian_statistics():
  cfg = degradations.default_lowlight_config()
  hr = _photo((4, 48, 48, 3))
  dark = degradations.darken(jax.random.key(0), hr, cfg)
  assert np.all(np.asarray(dark).mean(axis=(1, 2, 3)) < 0.6 * np.asarray(hr).mean(axis=(1, 2, 3)))
  # Fixed parameters, two constant levels: mean e x^g, variance a m + b^2 (clipping at 0 is
  # >4 std away). 27648 draws per level: standard errors ~0.2% of the mean's scale, ~0.9% of var.
  fixed = cfg.copy_and_resolve_references()
  fixed.gamma, fixed.exposure, fixed.shot, fixed.read = (2.0, 2.0), (0.5, 0.5), (0.01, 0.01), (0.01, 0.01)
  for level in (0.6, 0.9):
    out = np.asarray(degradations.darken(jax.random.key(1), jnp.full((4, 48, 48, 3), 255 * level),
                                         fixed), np.float64) / 255.0
    mean = 0.5 * level ** 2
    variance = 0.01 * mean + 0.01 ** 2
    assert abs(out.mean() - mean) < 4 * math.sqrt(variance / out.size)
    assert abs(out.var() / variance - 1.0) < 4 * math.sqrt(2.0 / out.size)


def test_jpeg_quantization_tables_follow_ijg_scaling():
  np.testing.assert_array_equal(degradations.quantization_table(degradations.JPEG_LUMA_TABLE, 50),
                                degradations.JPEG_LUMA_TABLE)
  assert degradations.quantization_table(degradations.JPEG_LUMA_TABLE, 100).max() == 1
  assert degradations.quantization_table(degradations.JPEG_LUMA_TABLE, 10)[0, 0] == 80   # 16 x 500%
  assert degradations.quantization_table(degradations.JPEG_CHROMA_TABLE, 1).max() == 255  # baseline
  with pytest.raises(ValueError, match="quality=0"):
    degradations.quantization_table(degradations.JPEG_LUMA_TABLE, 0)


@pytest.mark.parametrize("quality", [10, 75])
def test_jpeg_equals_pillow_within_the_integer_dct_difference(quality):
  import io
  from PIL import Image
  import skimage.data
  for photo, (top, left) in ((skimage.data.astronaut(), (100, 150)), (skimage.data.coffee(), (50, 200))):
    image = photo[top:top + 75, left:left + 101]   # sides not multiples of 16: edge handling too
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=quality, subsampling=2)   # 4:2:0
    pillow = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.float64)
    ours = np.asarray(degradations.jpeg(jnp.asarray(image, jnp.float32), quality), np.float64)
    np.testing.assert_array_equal(ours, np.round(ours))
    psnr = lambda x, y: 10 * np.log10(255 ** 2 / np.mean((x - y) ** 2))
    # Colour conversion, subsampling, quantization and chroma upsampling are libjpeg's own
    # integer arithmetic; only its fixed-point (ISLOW) DCTs differ from the exact ones here:
    # the IDCT's rounding moves pixels by one level (measured on up to ~30% of pixels), and
    # rarely a coefficient near a rounding boundary lands one quantization step away, moving its
    # block by up to ~q/4 (~20 levels at quality 10). So the mean absolute difference stays under
    # half a level, the decodes agree to > 40 dB (measured 43-55), and their PSNRs against the
    # original differ by < 0.1 dB (measured < 0.05): neither is systematically better.
    assert np.abs(ours - pillow).mean() < 0.5
    assert psnr(ours, pillow) > 40.0
    assert abs(psnr(ours, image) - psnr(pillow, image)) < 0.1


def test_jpeg_rounds_the_inverse_dct_s_halves_up_as_libjpeg():
  """libjpeg's DESCALE rounds x.5 up; a smooth chroma block decodes to exact halves where q / 8
  is one (chroma DC q = 28 at quality 30), so rounding half to even shifted a whole channel:
  Cr's mean moved by -1.55 levels on this crop. The fixed-point DCT's one-level differences are
  not biased, so each channel's mean difference from Pillow stays under a quarter level
  (measured <= 0.15 over 3 crops x 5 qualities)."""
  import io
  from PIL import Image
  import skimage.data
  image = skimage.data.astronaut()[100:148, 200:248]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, "JPEG", quality=30, subsampling=2)
  pillow = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), np.float64)
  ours = np.asarray(degradations.jpeg(jnp.asarray(image, jnp.float32), 30), np.float64)
  assert np.abs((ours - pillow).reshape(-1, 3).mean(axis=0)).max() < 0.25


def test_degrade_uses_given_real_inputs_and_old_configs_get_default_ranges():
  hr = _hr((2, 24, 24, 3))
  given = _hr((2, 24, 24, 3), seed=5)
  inputs, targets = degradations.degrade(tasks.get("dehaze"), jax.random.key(0), hr, _cfg(),
                                         given=given)
  np.testing.assert_array_equal(inputs, np.asarray(given, np.float32))
  np.testing.assert_array_equal(targets, np.asarray(hr, np.float32))
  with pytest.raises(ValueError, match="must match the clean crops"):
    degradations.degrade(tasks.get("deblur"), jax.random.key(0), hr, _cfg(), given=given[:, :12])
  cfg = _cfg()   # a config from before the new kinds: no haze / blur / lowlight blocks
  cfg.haze = degradations.default_haze_config()
  a = degradations.degrade(tasks.get("dehaze"), jax.random.key(0), hr, _cfg())[0]
  np.testing.assert_array_equal(a, degradations.degrade(tasks.get("dehaze"), jax.random.key(0), hr, cfg)[0])
  bad = _cfg()
  bad.blur = degradations.default_blur_config()
  bad.blur.size = 20
  with pytest.raises(ValueError, match="degrade.blur.size=20 must be an odd"):
    degradations.degrade(tasks.get("deblur"), jax.random.key(0), hr, bad)
