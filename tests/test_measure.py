"""mtl.measure: the stopping rule of checkpoint-mode analyze's sequential probing."""
import math

import numpy as np

from mtl import measure


def _grams(n, seed=0, dim=64, noise=2.0):
  """(n, 4, 4) half-split Gramians of two tasks whose true gradients have cosine 0.6."""
  rng = np.random.default_rng(seed)
  a = rng.standard_normal(dim)
  b = 0.6 * a + 0.8 * rng.standard_normal(dim) * np.linalg.norm(a) / math.sqrt(dim)
  out = []
  for _ in range(n):
    halves = np.stack([s + noise * rng.standard_normal(dim) for s in (a, a, b, b)])
    out.append(halves @ halves.T)
  return np.stack(out)


def test_widest_halfwidth_is_inf_without_an_interval_and_narrows_as_one_over_sqrt_n():
  assert measure.widest_halfwidth(_grams(3), ["x", "y"]) == (math.inf, "x~y")  # < 4 batches
  grams = _grams(1600)
  w100, _ = measure.widest_halfwidth(grams[:100], ["x", "y"])
  w1600, pair = measure.widest_halfwidth(grams, ["x", "y"])
  assert pair == "x~y" and 0 < w1600 < w100
  # 16x the batches: 1/4 the half-width (times t(1599)/t(99) = 0.99), up to the error of a
  # standard deviation estimated from 100 products of Gaussians (kurtosis ~9: relative SE
  # sqrt(8/400) = 14%); [0.15, 0.40] is 0.25 within 3 such errors either side.
  assert 0.15 < w1600 / w100 < 0.40
  assert measure.batches_needed(100, w100, w100 / 2) == 400
  assert measure.batches_needed(4, np.inf, 0.02) is None


def test_noisy_tasks_are_those_whose_halves_agree_less_than_half():
  # signal |a|^2 ~ 64 against half-batch noise 64 noise^2: agreement ~ 1 / (1 + noise^2)
  assert [t for t, _ in measure.noisy_tasks(_grams(200, noise=2.0), ["x", "y"])] == ["x", "y"]
  assert measure.noisy_tasks(_grams(200, noise=0.3), ["x", "y"]) == []
