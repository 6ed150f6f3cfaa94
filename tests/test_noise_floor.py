"""Noise floor of gradient cosines: half-split Gramians, same-task agreement, corrected cosines."""
import numpy as np
import pytest

from mtl.gramians import (HALVES, corrected_cosine_pieces, corrected_cosines, cosines,
                          half_names, interleave_halves, leaf_gramians, same_task_agreement,
                          task_gramian)


def half_index(task, half):
  """Row of half `half` (0 = a, 1 = b, or 'a' / 'b') of task `task` in the 2T order: 2t + h."""
  h = HALVES.index(half) if isinstance(half, str) else int(half)
  if h not in (0, 1):
    raise ValueError(f"half={half!r}; valid: 0, 1, 'a', 'b'")
  return 2 * int(task) + h


def explicit_cos(a, b):
  return np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))


def gram(j):
  return np.einsum("...id,...jd->...ij", j, j)


def unit_means(d):
  """Three unit vectors in R^d with cos(mu0, mu1) = 0.5, cos(mu0, mu2) = -0.3, cos(mu1, mu2) = 0."""
  e = np.eye(3, d)
  y = 0.15 / np.sqrt(0.75)  # makes <mu1, mu2> = 0.5 * -0.3 + sqrt(0.75) * y = 0
  return np.stack([e[0], 0.5 * e[0] + np.sqrt(0.75) * e[1],
                   -0.3 * e[0] + y * e[1] + np.sqrt(1 - 0.09 - y * y) * e[2]])


TRUE_COS = np.array([[1.0, 0.5, -0.3], [0.5, 1.0, 0.0], [-0.3, 0.0, 1.0]])


def test_half_order_helpers():
  assert [half_index(t, h) for t in range(2) for h in "ab"] == [0, 1, 2, 3]
  assert half_names(["sr", "derain"]) == ["sr/a", "sr/b", "derain/a", "derain/b"]
  rng = np.random.default_rng(0)
  ga = {"w": rng.normal(size=(3, 4, 5)), "b": rng.normal(size=(3, 5))}
  gb = {"w": rng.normal(size=(3, 4, 5)), "b": rng.normal(size=(3, 5))}
  both = interleave_halves(ga, gb)
  # jax keeps float32: equal up to float32 rounding of the float64 inputs
  np.testing.assert_allclose(np.asarray(both["w"][half_index(2, "b")]), gb["w"][2], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(both["b"][half_index(1, "a")]), ga["b"][1], rtol=1e-6)
  G2 = np.asarray(leaf_gramians(both))  # leaves in tree order: 'b', then 'w'
  flat = np.concatenate([np.stack([ga["w"][t].ravel(), gb["w"][t].ravel()]) for t in range(3)])
  np.testing.assert_allclose(G2[1], gram(flat), rtol=1e-5)
  with pytest.raises(ValueError, match="half"):
    half_index(0, 2)


def test_task_gramian_and_agreement_match_explicit_vectors():
  rng = np.random.default_rng(1)
  j = rng.normal(size=(4, 6, 40))  # (steps, 2T, D) in the 2T order
  G2 = gram(j)
  avg = (j[:, 0::2] + j[:, 1::2]) / 2  # g_t = (g_t^a + g_t^b) / 2
  np.testing.assert_allclose(task_gramian(G2), gram(avg), rtol=1e-10)
  agree = same_task_agreement(G2)
  assert agree.shape == (4, 3)
  assert agree[2, 1] == pytest.approx(explicit_cos(j[2, 2], j[2, 3]), abs=1e-12)
  cross, same = corrected_cosine_pieces(G2)
  assert same[3, 2] == pytest.approx(np.dot(j[3, 4], j[3, 5]))
  assert cross[0, 0, 2] == pytest.approx(np.dot(avg[0, 0], avg[0, 2]))  # i != j: all 4 pairings
  assert cross[0, 1, 1] == pytest.approx(np.dot(j[0, 2], j[0, 3]))      # i == j: only a.b, b.a


def test_corrected_cosine_recovers_true_cosine_under_heavy_noise():
  d, steps, sigma2 = 2000, 200, 0.004  # half noise: per-coordinate variance sigma2, |e|^2 ~ 8
  rng = np.random.default_rng(2)
  mu = unit_means(d)
  halves = np.repeat(mu, 2, axis=0)[None] + np.sqrt(sigma2) * rng.normal(size=(steps, 6, d))
  G2 = gram(halves)
  rho = corrected_cosines(G2, axis=0)
  raw = np.mean(cosines(task_gramian(G2)), axis=0)  # the per-step raw cosine, window mean
  # Raw cosine of g = mu + (e^a + e^b)/2: |g|^2 ~ 1 + d sigma2 / 2 = 5, so it shrinks 5-fold.
  attenuation = 1.0 / (1.0 + d * sigma2 / 2)
  for i, j in [(0, 1), (0, 2), (1, 2)]:
    # Exact per-step variances of the Gaussian pieces (unit |mu|): cross = <mu_i, mu_j> +
    # <mu_i, ebar_j> + <ebar_i, mu_j> + <ebar_i, ebar_j> with ebar of variance sigma2 / 2;
    # same = 1 + <mu, e^a> + <mu, e^b> + <e^a, e^b>. The linearised ratio error is
    # dcross - rho/2 (dsame_i + dsame_j); the triangle inequality for SDs bounds its SE.
    se_cross = np.sqrt((sigma2 + d * sigma2 ** 2 / 4) / steps)
    se_same = np.sqrt((2 * sigma2 + d * sigma2 ** 2) / steps)
    se_bound = se_cross + abs(TRUE_COS[i, j]) * se_same
    # 4 SE: a false failure has probability < 1e-4 per pair; second-order terms ~ se_same^2 = 2e-4.
    assert abs(rho[i, j] - TRUE_COS[i, j]) < 4 * se_bound, (i, j, rho[i, j], se_bound)
    assert abs(raw[i, j] - attenuation * TRUE_COS[i, j]) < 0.02  # the attenuation, as predicted
  assert abs(raw[0, 1]) < 0.15 and abs(rho[0, 1]) > 0.4  # raw ~0.1 where the truth is 0.5
  np.testing.assert_allclose(np.diagonal(rho), 1.0)
  # Halves agree only weakly (the noise floor): cos(g^a, g^b) ~ 1 / (1 + d sigma2) = 1/9.
  np.testing.assert_allclose(same_task_agreement(G2).mean(0), 1 / (1 + d * sigma2), atol=0.02)


def test_not_measurable_is_nan_and_values_are_not_clipped():
  rng = np.random.default_rng(3)
  u, v, w = rng.normal(size=(3, 30))
  # Task 1's halves point apart: <g_1^a, g_1^b> < 0, so every pair with task 1 is NaN.
  j = np.stack([u, u + 0.1 * v, w, -w + 0.1 * v, v, v + 0.2 * u])
  rho = corrected_cosines(gram(j))
  assert np.isnan(rho[1]).all() and np.isnan(rho[:, 1]).all()
  assert np.isfinite(rho[0, 2]) and rho[0, 0] == 1.0
  # Pooled over two steps, the summed same-task product of task 1 is positive again.
  j2 = np.stack([j, np.stack([u, u, 3 * w, 3 * w, v, v])])
  pooled = corrected_cosines(gram(j2), axis=0)
  assert np.isfinite(pooled).all()
  np.testing.assert_array_equal(corrected_cosines(gram(j2), axis=-3), pooled)  # axes as in G2
  cross, same = corrected_cosine_pieces(gram(j2))
  assert pooled[0, 1] == pytest.approx(cross[:, 0, 1].sum()
                                       / np.sqrt(same[:, 0].sum() * same[:, 1].sum()))
  # Weakly agreeing halves with a strong cross product: |rho| > 1, reported unclipped.
  a = np.array([1.0, 0.0, 0.0])
  b = np.array([0.1, 1.0, 0.0])   # <a, b> = 0.1: task 0 barely agrees with itself
  c = np.array([1.0, 1.0, 0.0])   # task 1: both halves c, <c, c> = 2
  rho = corrected_cosines(gram(np.stack([a, b, c, c])))
  expect = np.mean([a @ c, b @ c]) / np.sqrt(0.1 * 2.0)
  assert rho[0, 1] == pytest.approx(expect) and rho[0, 1] > 1
  np.testing.assert_array_equal(np.abs(np.nan_to_num(rho)) > 1, [[False, True], [True, False]])
  with pytest.raises(ValueError, match="even"):
    corrected_cosines(np.eye(3))
  with pytest.raises(ValueError, match="axis"):
    corrected_cosines(gram(j2), axis=1)


def test_pooled_target_is_the_cosine_of_step_concatenated_means():
  # Noise-free halves (g^a = g^b = mu_s) whose means change with the step: the pooled value is
  # the cosine of (mu_1, ..., mu_S) stacked over steps, not the mean of per-step cosines.
  rng = np.random.default_rng(4)
  mu = rng.normal(size=(5, 2, 16)) * np.array([0.1, 1, 3, 0.5, 2])[:, None, None]
  rho = corrected_cosines(gram(np.repeat(mu, 2, axis=1)), axis=0)
  stacked = mu.transpose(1, 0, 2).reshape(2, -1)
  assert rho[0, 1] == pytest.approx(explicit_cos(stacked[0], stacked[1]), abs=1e-12)
  per_step = np.mean([explicit_cos(m[0], m[1]) for m in mu])
  assert abs(rho[0, 1] - per_step) > 1e-3


# ----------------------------------------------------------------------------- records, store


LAYERS = ["token_embed/kernel", "encoder/0/attn/query/kernel", "out_mlp/fc1/kernel"]
TASKS = ["denoise_30", "sr_x2", "derain"]


def half_gramians(mu, steps, sigma, seed=0):
  """(steps, L, 2T, 2T) Gramians of halves mu_t + noise; mu (T, D) split evenly over L leaves."""
  rng = np.random.default_rng(seed)
  halves = np.repeat(mu, 2, axis=0)[None] + sigma * rng.normal(size=(steps,) + (2 * len(mu),)
                                                               + mu.shape[1:])
  leaves = np.array_split(halves, len(LAYERS), axis=-1)
  return np.stack([gram(leaf) for leaf in leaves], axis=1)


def test_record_noise_floor_and_verdicts(tmp_path):
  from mtl import conflicts
  d, steps, sigma2 = 600, 64, 0.01  # |e|^2 ~ 6 per half: raw cosines shrink ~4-fold
  mu = unit_means(d)
  mu[1:] = -mu[1:]  # cos(mu0, mu1) = -0.5: conflict; cos(mu0, mu2) = +0.3; cos(mu1, mu2) = 0
  G2 = half_gramians(mu, steps, np.sqrt(sigma2))
  wd = str(tmp_path / "run7")
  conflicts.append(wd, np.arange(steps) * 2, G2.astype(np.float32), LAYERS, TASKS)
  record = conflicts.load(wd)
  assert record.halves and record.name == "run7"
  assert record.gramians.shape == (steps, 3, 3, 3) and record.half_gramians.shape == G2.shape
  body = G2.sum(1)
  # The stored float32 Gramians round each entry by ~6e-8 of the step's largest: hence 1e-5.
  scale = np.abs(body).max()
  np.testing.assert_allclose(record.gramians.sum(1) / scale, task_gramian(body) / scale,
                             atol=1e-5)
  np.testing.assert_allclose(record.corrected_cosines("body", window=16)[0],
                             corrected_cosines(body[-16:], axis=0), rtol=1e-5)
  np.testing.assert_allclose(record.same_task_agreement("body")[:, 0], same_task_agreement(body),
                             rtol=1e-5)
  out = conflicts.summarize(record)
  pair = out["pair"]["denoise_30~sr_x2"]
  corrected = pair["corrected_cos"]
  assert corrected["estimate"] == pytest.approx(corrected_cosines(body, axis=0)[0, 1], rel=1e-5)
  assert corrected["high"] < 0 and abs(corrected["estimate"] + 0.5) < 0.15
  assert pair["verdict"] == conflicts.CONFLICT
  raw = pair["cos_interval"]  # the raw window mean, shrunk ~4-fold by the noise: -0.5 / 4
  assert raw["estimate"] == pytest.approx(-0.5 / (1 + d * sigma2 / 2), abs=0.04)
  assert raw["low"] < raw["estimate"] < raw["high"] < 0
  assert out["pair"]["denoise_30~derain"]["verdict"] == conflicts.AGREEMENT
  assert out["pair"]["sr_x2~derain"]["verdict"] == conflicts.UNDETECTED    # true cos 0
  agree = out["noise_floor"]["same_task_agreement"]
  # cos(g^a, g^b) ~ 1 / (1 + d sigma2) = 1/7 for unit means.
  assert agree["sr_x2"] == pytest.approx(1 / (1 + d * sigma2), abs=0.03)
  assert pair["same_task_agreement"] == [agree["denoise_30"], agree["sr_x2"]]
  assert out["noise_floor"]["interval_method"] == "batch_means"


def test_not_measurable_verdict():
  from mtl import conflicts, stats
  nan = stats.Interval(float("nan"), float("nan"), float("nan"), 0.95, 10)
  assert conflicts.pair_verdict(nan) == conflicts.NOT_MEASURABLE
  short = stats.Interval(-0.4, float("nan"), float("nan"), 0.95, 3)  # too few steps: no interval
  assert conflicts.pair_verdict(short) == conflicts.UNDETECTED
  assert conflicts.pair_verdict(stats.Interval(-0.4, -0.6, 0.01, 0.95, 30)) == conflicts.UNDETECTED
  assert conflicts.pair_verdict(stats.Interval(0.4, 0.1, 0.7, 0.95, 30)) == conflicts.AGREEMENT
