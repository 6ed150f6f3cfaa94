"""Intervals, tests and verdicts for the numbers mtl reports: seeds, window means, ranks.

One job: say how sure a reported number is. Every interval is an `Interval` (estimate, low,
high, level, n, p, method, note); a NaN interval always carries a one-line `note` saying why.

  paired_interval       b - a over seeds: paired t interval and two-sided p (Student 1908)
  seeds_needed          the seeds a t-test over seeds needs to detect an effect of that size
  verdict               'gain' / 'loss' only when the interval excludes 0
  window_mean_interval  mean of an autocorrelated per-step series: batch means (default) or a
                        moving-block bootstrap
  pooled_ratio_interval sum(num) / sqrt(sum(den_a) sum(den_b)) over a window (the corrected
                        cosine): batch means of the pieces + the delta method, or block bootstrap
  corrected_cosine_intervals  that, for every task pair of a window of half-split Gramians
  corrected_cosine_grid that and resolved_noise_floors for many groups at once, as arrays
  conflict_fraction_interval  share of steps < 0: Wilson score interval at an effective n
  negative_share_draws  that effective n and its df (negative_share_n_eff, negative_share_df;
                        independent probes: n)
  wilson_interval       a share's Wilson score interval at n draws
  mean_of_shares        the mean of independent runs' shares: Wilson at their combined n,
                        widened where the seeds differ more
  mean_of_runs          the mean of independent runs' window means (seeds), from their intervals
  spearman              rank correlation with an exact (n <= 9) or Monte Carlo permutation p
  delta_m               Delta_m% of Maninis et al. (2019) / Vandenhende et al. (2021)
"""
import itertools
import math
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from mtl.gramians import corrected_cosine_pieces, pair_indices

NO_DIFFERENCE = "no detectable difference"
WINDOW_METHODS = ("batch_means", "block_bootstrap", "independent")
EXACT_MAX_N = 9             # 9! = 362880 permutations: exact; above, Monte Carlo
SPEARMAN_MIN_N = 3          # below 3 pairs every permutation gives |rho| = 1: no test at all
MC_PERMUTATIONS = 9999      # Monte Carlo permutation count; p resolution 1e-4
BOOTSTRAP_DRAWS = 2000
PLAN_MAX_SEEDS = 1000       # seeds_needed looks no further


class Interval(NamedTuple):
  """An estimate with a two-sided interval at `level`; p: two-sided p of 'no effect' (or NaN)."""
  estimate: float
  low: float
  high: float
  level: float
  n: int
  p: float = float("nan")
  method: str = ""
  note: str = ""

  def text(self, digits=2, percent=False, missing="n/a"):
    """'+0.01 [-0.02, +0.04]' ('12.5% [9.0, 16.8]' with percent); the estimate alone where there
    is no interval, `missing` where there is no estimate. Never '-0.00'."""
    scale, sign, unit = (100, "", "%") if percent else (1, "+", "")
    fmt = lambda v: f"{np.round(scale * v, digits) + 0.0:{sign}.{digits}f}"
    if not math.isfinite(self.estimate):
      return missing
    if not (math.isfinite(self.low) and math.isfinite(self.high)):
      return fmt(self.estimate) + unit
    return f"{fmt(self.estimate)}{unit} [{fmt(self.low)}, {fmt(self.high)}]"


def _nan_interval(level, n, method, note, estimate=float("nan")):
  return Interval(float(estimate), float("nan"), float("nan"), level, int(n), float("nan"),
                  method, note)


def _check_level(level):
  if not 0.0 < level < 1.0:
    raise ValueError(f"level={level}; valid: 0 < level < 1 (e.g. 0.95)")


NO_SPREAD = "no spread between the values: they cannot say how sure the estimate is"


def _t_interval(estimate, se, df, level, n, method, note=""):
  """estimate +- t_{df, (1+level)/2} se, with the two-sided p of estimate / se. Values without
  any spread (se = 0: e.g. rounded metrics equal across seeds) give a NaN interval and p, so
  no verdict and no test rests on them."""
  if not se > 0:
    return _nan_interval(level, n, method, NO_SPREAD, estimate)
  q = sps.t.ppf((1 + level) / 2, df)
  p = float(2 * sps.t.sf(abs(estimate) / se, df))
  return Interval(float(estimate), float(estimate - q * se), float(estimate + q * se), level, n,
                  p, method, note)


# ----------------------------------------------------------------------------- over seeds


def paired_interval(a, b, level=0.95):
  """Mean paired difference b - a over seeds, its t interval and two-sided p.

  a[k], b[k]: one metric of two arms (e.g. scratch, joint) on the same seed k. The paired t
  interval (Student 1908) uses scipy.stats.t with n - 1 degrees of freedom; it assumes the
  differences are roughly normal, the only workable assumption at 3-5 seeds. Pairs with a NaN
  or an infinity in either arm are dropped (a PSNR of identical images is inf: no difference of
  it is a number). n >= 2 pairs; at n = 2 the 95% interval is mean +- 12.7 SE: very wide, and
  rightly so.
  """
  _check_level(level)
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  if a.shape != b.shape:
    raise ValueError(f"paired arms differ in length: {a.size} vs {b.size}; pass one value per seed")
  d = (b - a)[np.isfinite(a) & np.isfinite(b)]
  if d.size < 2:
    raise ValueError(f"paired_interval needs >= 2 seeds with both arms measured; got {d.size}")
  se = d.std(ddof=1) / math.sqrt(d.size)
  return _t_interval(d.mean(), se, d.size - 1, level, d.size, "paired t")


def seeds_needed(interval, power=0.8, max_seeds=PLAN_MAX_SEEDS, test_level=None):
  """About how many seeds a two-sided t-test at `test_level` (default: `interval`'s level)
  needs to detect a true effect as large as its estimate, were the spread over seeds the one
  observed, at `power` (the noncentral t; Cohen 1988): a planning figure for a comparison the
  seeds left open, not evidence of an effect. `interval`: a t interval from its n seeds, n - 1 df
  (paired_interval's Δ, or mean_of_runs' where the seeds' spread sets it). None without an
  estimate or a spread (fewer than 2 seeds), for an estimate of 0, or beyond `max_seeds`."""
  n, d = interval.n, interval.estimate
  if n < 2 or not (math.isfinite(d) and math.isfinite(interval.high)) or d == 0:
    return None
  sd = (interval.high - d) / sps.t.ppf((1 + interval.level) / 2, n - 1) * math.sqrt(n)
  if not sd > 0:
    return None
  test_level = interval.level if test_level is None else test_level
  _check_level(test_level)

  for m in range(2, max_seeds + 1):  # power grows with the seeds: the first m that reaches it
    crit, shift = sps.t.ppf((1 + test_level) / 2, m - 1), abs(d) / (sd / math.sqrt(m))
    # The wrong-sign tail is below the central t's (1 - level) / 2 and vanishes as the shift
    # grows; scipy's nct.cdf returns NaN there for large shifts, which would skip this m.
    wrong_sign = sps.nct.cdf(-crit, m - 1, shift)
    if sps.nct.sf(crit, m - 1, shift) + np.nan_to_num(wrong_sign, nan=0.0) >= power:
      return m
  return None


def verdict(interval, higher_is_better=True):
  """'gain' / 'loss' when the interval of b - a excludes 0, else 'no detectable difference'.

  higher_is_better: True for PSNR / SSIM, False for losses, LPIPS, errors. A NaN interval is
  'no detectable difference' too: nothing was shown.
  """
  low, high = interval.low, interval.high
  if np.isnan(low) or np.isnan(high) or low <= 0 <= high:
    return NO_DIFFERENCE
  better = low > 0 if higher_is_better else high < 0
  return "gain" if better else "loss"


def holm(p_values):
  """Holm's (1979) step-down adjusted p-values of a family of tests, in the order given: the k
  finite p sorted ascending, the i-th (from 0) times k - i, made non-decreasing in that order and
  capped at 1. A test whose adjusted p is below a holds at family-wise level a: the chance that
  any of the k rejects a true null is at most a. A NaN stays NaN and is not counted in k."""
  p = np.asarray(p_values, np.float64).ravel()
  adjusted = np.full(p.shape, np.nan)
  finite = np.flatnonzero(np.isfinite(p))
  running = 0.0
  for i, index in enumerate(finite[np.argsort(p[finite], kind="stable")]):
    running = max(running, min(1.0, (finite.size - i) * p[index]))
    adjusted[index] = running
  return adjusted


# ----------------------------------------------------------------------------- over steps


def _batches(n, method="batch_means"):
  """(number of batches, batch size, first index used): ~sqrt(n) non-overlapping batches; one
  per value for method 'independent'.

  The remainder n - b m is dropped at the START so the window's latest steps are all used.
  """
  if method == "independent":
    return n, 1, 0
  b = int(math.isqrt(n))
  m = n // b
  return b, m, n - b * m


def _check_method(method):
  if method not in WINDOW_METHODS:
    raise ValueError(f"method={method!r}; valid: {', '.join(WINDOW_METHODS)}")


def _block_indices(n, draws, seed):
  """Moving-block bootstrap (Kuensch 1989) index sets (draws, n); block length ceil(n^(1/3))."""
  rng = np.random.default_rng(seed)
  length = int(math.ceil(n ** (1 / 3)))
  k = -(-n // length)
  starts = rng.integers(0, n - length + 1, size=(draws, k))
  return (starts[:, :, None] + np.arange(length)).reshape(draws, -1)[:, :n]


def _percentile(estimate, replicates, level, n, method):
  replicates = replicates[np.isfinite(replicates)]
  if replicates.size == 0:
    return _nan_interval(level, n, method, "no finite bootstrap replicate", estimate)
  low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
  # Two-sided percentile p for 0: twice the smaller tail share (with the +1 of Davison & Hinkley).
  tail = min((replicates <= 0).sum(), (replicates >= 0).sum())
  p = float(min(1.0, 2 * (tail + 1) / (replicates.size + 1)))
  return Interval(float(estimate), float(low), float(high), level, n, p, method)


def window_mean_interval(x, level=0.95, method="batch_means", draws=BOOTSTRAP_DRAWS, seed=0):
  """Mean of a per-step series over a window and an interval that respects autocorrelation.

  Probe series (cosines, norms) are strongly autocorrelated; an iid interval s / sqrt(n) is
  too narrow (at AR(1) phi = 0.8 it covers ~50% instead of 95%). NaN entries are skipped.
  method='batch_means' (default): the window mean +- t SE, SE from ~sqrt(n) non-overlapping
    batch means (batches - 1 df; a remainder is left out of the SE at the oldest end).
    Batch size ~sqrt(n) makes the variance estimate consistent (Flegal & Jones 2010). It
    is deterministic (no RNG) and covered 91% of AR(1) (phi = 0.8, n = 400) means in 1000
    simulations, where the moving-block bootstrap covered ~81-86%: hence the default.
  method='block_bootstrap': moving blocks of ceil(n^(1/3)) steps, `draws` resamples with
    RNG `seed`, percentile interval.
  method='independent': every value its own batch (n - 1 df), for values measured on fresh
    batches of their own (probe batches, conflicts.batch_size): their noise is independent
    given the parameters, and the drift of the true value within the window only widens the
    interval, so it covers at least the window's mean of this run's true values.
  n >= 4 defined values (2 batches); fewer: NaN interval with a note.
  """
  _check_level(level)
  _check_method(method)
  x = np.asarray(x, np.float64).ravel()
  x = x[~np.isnan(x)]
  n = x.size
  if n < 4:
    return _nan_interval(level, n, method, f"{n} defined values; an interval needs >= 4",
                         x.mean() if n else float("nan"))
  if method == "block_bootstrap":
    return _percentile(x.mean(), x[_block_indices(n, draws, seed)].mean(axis=1), level, n, method)
  y, start = _batch_means(x, method)
  b = len(y)
  note = "" if start == 0 else f"SE from the latest {n - start} of {n} values (whole batches)"
  return _t_interval(x.mean(), y.std(ddof=1) / math.sqrt(b), b - 1, level, n, method, note)


def _batch_means(x, method):
  """(batch means (b, ...) of x (n, ...) along axis 0, first index used): `_batches`' batches."""
  b, m, start = _batches(x.shape[0], method)
  return x[start:].reshape((b, m) + x.shape[1:]).mean(axis=1), start


def _pooled_ratio(s_num, s_a, s_b=None):
  """s_num / sqrt(s_a s_b) (s_num / s_a without s_b); NaN where a denominator is <= 0."""
  with np.errstate(divide="ignore", invalid="ignore"):
    if s_b is None:
      return np.where(s_a > 0, s_num / np.where(s_a > 0, s_a, 1.0), np.nan)
    ok = (s_a > 0) & (s_b > 0)
    return np.where(ok, s_num / np.sqrt(np.where(ok, s_a * s_b, 1.0)), np.nan)


def _delta_se(yn, ya, yb=None):
  """(the ratio at the batch means, its delta-method SE) from the pieces' batch means (b, ...):
  the ratio linearised around the pooled means, z_k = (num_k - num) / sqrt(a b) - R/2 ((a_k - a)
  / a + (b_k - b) / b) (z_k = (num_k - num) / a - R (a_k - a) / a without b), SE = sd(z) /
  sqrt(b). NaN where a mean denominator is <= 0."""
  mn, ma = yn.mean(axis=0), ya.mean(axis=0)
  with np.errstate(divide="ignore", invalid="ignore"):
    if yb is None:
      rb = _pooled_ratio(mn, ma)
      z = (yn - mn) / ma - rb * (ya - ma) / ma
    else:
      mb = yb.mean(axis=0)
      rb = _pooled_ratio(mn, ma, mb)
      z = (yn - mn) / np.sqrt(ma * mb) - rb / 2 * ((ya - ma) / ma + (yb - mb) / mb)
  return rb, z.std(axis=0, ddof=1) / math.sqrt(len(yn))


def pooled_ratio_interval(num, den_a, den_b=None, level=0.95, method="batch_means",
                          draws=BOOTSTRAP_DRAWS, seed=0):
  """R = sum(num) / sqrt(sum(den_a) sum(den_b)) over a window (sum(num) / sum(den_a) if no den_b).

  The corrected cosine of a window is such a ratio of pooled sums (mtl.gramians).
  Steps with a NaN piece are skipped. NaN ("not measurable") where a pooled denominator is
  <= 0; the estimate is not clipped (|R| > 1 means a noisy window).
  method='batch_means' (default): the pieces' means over ~sqrt(n) batches, the ratio
    linearised around the pooled means (delta method):
      z_k = (num_k - num) / sqrt(a b) - R/2 ((a_k - a) / a + (b_k - b) / b),
    SE = sd(z) / sqrt(batches), t quantile with batches - 1 df.
  method='block_bootstrap': moving blocks of steps, the pooled ratio per resample, percentiles.
  method='independent': as batch_means with every step its own batch (see window_mean_interval).
  """
  _check_level(level)
  _check_method(method)
  num = np.asarray(num, np.float64).ravel()
  da = np.asarray(den_a, np.float64).ravel()
  db = da if den_b is None else np.asarray(den_b, np.float64).ravel()
  if not num.shape == da.shape == db.shape:
    raise ValueError(f"pieces differ in length: {num.size}, {da.size}, {db.size}; "
                     "pass one value per step")
  ok = ~(np.isnan(num) | np.isnan(da) | np.isnan(db))
  num, da, db = num[ok], da[ok], db[ok]
  n = num.size
  single = den_b is None
  ratio = lambda s_num, s_a, s_b: _pooled_ratio(s_num, s_a, None if single else s_b)

  if n == 0:
    return _nan_interval(level, 0, method, "no step with all pieces defined")
  r = float(ratio(num.sum(), da.sum(), db.sum()))
  if np.isnan(r):
    return _nan_interval(level, n, method, "not measurable: a pooled same-task product is <= 0")
  if n < 4:
    return _nan_interval(level, n, method, f"{n} steps; an interval needs >= 4", r)
  if method == "block_bootstrap":
    idx = _block_indices(n, draws, seed)
    reps = ratio(num[idx].sum(1), da[idx].sum(1), db[idx].sum(1))
    return _percentile(r, reps, level, n, method)
  (yn, start), (ya, _), (yb, _) = (_batch_means(v, method) for v in (num, da, db))
  rb, se = _delta_se(yn, ya, None if single else yb)  # linearised at the batched steps' ratio
  if np.isnan(rb):
    return _nan_interval(level, n, method, "not measurable over the batched steps", r)
  note = "" if start == 0 else f"SE from the latest {n - start} of {n} steps (whole batches)"
  # The estimate is the whole window's pooled ratio, the value corrected_cosines reports.
  return _t_interval(r, float(se), len(yn) - 1, level, n, f"{method} + delta", note)


def corrected_cosine_intervals(G2, level=0.95, method="batch_means"):
  """Intervals of the window's corrected cosine for every task pair i < j.

  G2: (S, 2T, 2T) half-split Gramians of one group (e.g. the whole body) over S probe steps.
  Returns a list of Intervals in `pair_indices` order (resolved_noise_floors says which may
  be read for their size).
  """
  G2 = np.asarray(G2, np.float64)
  if G2.ndim != 3:
    raise ValueError(f"G2 of shape {G2.shape}; expected (steps, 2T, 2T) for one group")
  cross, same = corrected_cosine_pieces(G2)
  return [pooled_ratio_interval(cross[:, i, j], same[:, i], same[:, j], level, method)
          for i, j in pair_indices(same.shape[-1])]


def resolved_noise_floors(G2, level=0.95, method="batch_means"):
  """(T,) bool: whether each task's window mean of the same-task product <g_t^a, g_t^b> (the
  corrected cosine's denominator piece) lies above 0 at `level` (window_mean_interval).

  Fieller (1954): a ratio's confidence set is a bounded interval only where its denominator
  is significantly nonzero. Where a task's is not, its corrected cosines' delta-method
  intervals still guard the sign (in simulation they exclude a true 0 no more often than their
  level allows, so verdicts stand) but not the size: at low signal those within [-1, 1] miss
  the true cosine far more often than 5%, so figures leave those cosines uncoloured and the
  trainer does not log them. A resolved pair's interval may reach past +-1: a precise cosine
  near +-1 (tests/test_stats.py measures both).
  """
  G2 = np.asarray(G2, np.float64)
  if G2.ndim != 3:
    raise ValueError(f"G2 of shape {G2.shape}; expected (steps, 2T, 2T) for one group")
  same = corrected_cosine_pieces(G2)[1]
  return np.array([window_mean_interval(same[:, t], level, method).low > 0
                   for t in range(same.shape[-1])], bool)


def corrected_cosine_grid(G2, level=0.95, method="batch_means"):
  """corrected_cosine_intervals and resolved_noise_floors of many groups at once, as arrays.

  G2: (S, R, 2T, 2T) half-split Gramians of R groups over S probe steps. Returns {"estimate",
  "low", "high", "p": (R, P) in `pair_indices` order, "resolved": (R, T)}: the numbers those
  two functions give group by group, vectorised (a paper-size layer x step map asks for ~10^5
  intervals); NaN where they give NaN. The block bootstrap, or a non-finite Gramian (whose
  step those functions skip), goes group by group through them.
  """
  G2 = np.asarray(G2, np.float64)
  if G2.ndim != 4:
    raise ValueError(f"G2 of shape {G2.shape}; expected (steps, groups, 2T, 2T)")
  steps, groups, t = G2.shape[0], G2.shape[1], G2.shape[-1] // 2
  pairs = pair_indices(t)
  if method == "block_bootstrap" or not np.isfinite(G2).all():
    cells = [corrected_cosine_intervals(G2[:, r], level, method) for r in range(groups)]
    out = {k: np.array([[getattr(iv, k) for iv in row] for row in cells],
                       np.float64).reshape(groups, len(pairs)) for k in ("estimate", "low",
                                                                         "high", "p")}
    out["resolved"] = np.array([resolved_noise_floors(G2[:, r], level, method)
                                for r in range(groups)], bool).reshape(groups, t)
    return out
  _check_level(level)
  _check_method(method)
  cross, same = corrected_cosine_pieces(G2)  # (S, R, T, T), (S, R, T)
  i, j = (np.array([p[k] for p in pairs], int) for k in (0, 1))
  num, da, db = cross[..., i, j], same[..., i], same[..., j]  # (S, R, P)
  out = {"estimate": _pooled_ratio(num.sum(axis=0), da.sum(axis=0), db.sum(axis=0))}
  nan = np.full(out["estimate"].shape, np.nan)
  out.update(low=nan, high=nan, p=nan, resolved=np.zeros((groups, t), bool))
  if steps < 4:  # no interval, as pooled_ratio_interval and window_mean_interval
    return out
  rb, se = _delta_se(*(_batch_means(v, method)[0] for v in (num, da, db)))
  ys = _batch_means(same, method)[0]
  df = len(ys) - 1
  q = sps.t.ppf((1 + level) / 2, df)
  se_same = ys.std(axis=0, ddof=1) / math.sqrt(len(ys))
  out["resolved"] = (se_same > 0) & (same.mean(axis=0) - q * se_same > 0)
  ok = np.isfinite(out["estimate"]) & np.isfinite(rb) & (se > 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    out["low"] = np.where(ok, out["estimate"] - q * se, np.nan)
    out["high"] = np.where(ok, out["estimate"] + q * se, np.nan)
    out["p"] = np.where(ok, 2 * sps.t.sf(np.abs(out["estimate"]) / se, df), np.nan)
  return out


SEEDS_DIFFER = "the seeds differ beyond their own intervals"


def mean_of_estimates(intervals, level=0.95):
  """The mean of independent estimates of one thing (a run's last checkpoints, each measured on
  batches of its own) with the se of their noise alone: se_i = half-width_i / z, se =
  sqrt(sum se_i^2) / k, normal quantile. It covers the mean of those k values, not what they
  scatter around (mean_of_runs adds that). NaN estimates are left out (as by mean_of_runs);
  one left: itself; none, or one without an interval: a NaN interval saying so."""
  _check_level(level)
  parts = [iv for iv in intervals if math.isfinite(iv.estimate)]
  method = f"mean of {len(parts)} estimates (se from their own intervals)"
  if len(parts) == 1:
    return parts[0]
  if not parts:
    return _nan_interval(level, 0, method, "no estimate")
  estimate = float(np.mean([iv.estimate for iv in parts]))
  if not all(math.isfinite(iv.low) and math.isfinite(iv.high) for iv in parts):
    return _nan_interval(level, len(parts), method, "an estimate has no interval", estimate)
  z = sps.norm.ppf((1 + level) / 2)
  se = _within_se(parts, z)
  if not se > 0:
    return _nan_interval(level, sum(iv.n for iv in parts), method, NO_SPREAD, estimate)
  p = float(2 * sps.norm.sf(abs(estimate) / se))
  return Interval(estimate, estimate - z * se, estimate + z * se, level,
                  sum(iv.n for iv in parts), p, method)


def _within_se(intervals, z):
  """sqrt(sum se_i^2) / k of k independent estimates, se_i = half-width_i / z."""
  return math.sqrt(sum(((iv.high - iv.low) / (2 * z)) ** 2 for iv in intervals)) / len(intervals)


def mean_of_runs(intervals, level=0.95):
  """The mean of k independent runs' estimates (one window mean per seed) with an interval
  whose se is the larger of two. Within runs: from the runs' own intervals, se_i = half-width_i
  / z, se = sqrt(sum se_i^2) / k (runs' t-quantile intervals give se_i >= the true one, so it
  errs wide); normal quantile. Between runs (k >= 2): s / sqrt(k), s the estimates' standard
  deviation, which also holds the seeds' own differences (the moment estimate of a
  between-seed variance, as in DerSimonian & Laird 1986); Student t quantile with k - 1 df, as
  s comes from k values. Trained models that disagree beyond their noise leave the mean
  undecided however precise each is, and the note says so. NaN runs are left out; none left,
  or one without an interval: a NaN interval saying so.

  Coverage of a shared mean when each seed's true value scatters by tau around it (40,000
  simulations, 3 seeds): >= 92% at every tau/se_i from 0 to 20 (a z quantile throughout:
  81% once tau dominates); 2 seeds: >= 87%."""
  _check_level(level)
  runs = [iv for iv in intervals if math.isfinite(iv.estimate)]
  method = ("mean of runs (independent seeds; se: the larger of within-run (normal) and "
            "between-seed (t, k-1 df))")
  if not runs:
    return _nan_interval(level, 0, method, "no run has an estimate")
  estimate = float(np.mean([iv.estimate for iv in runs]))
  if not all(math.isfinite(iv.low) and math.isfinite(iv.high) for iv in runs):
    return _nan_interval(level, len(runs), method, "a run has no interval", estimate)
  k, z = len(runs), sps.norm.ppf((1 + level) / 2)
  se = _within_se(runs, z)
  between = float(np.std([iv.estimate for iv in runs], ddof=1)) / math.sqrt(k) if k > 1 else 0.0
  # Noise alone puts `between` above `se` 37% and above 2 se 2% of the time (3 seeds): the latter
  # says the seeds differ.
  note = SEEDS_DIFFER if between > 2 * se else ""
  dist = sps.t(k - 1) if between > se else sps.norm
  se = max(se, between)
  if not se > 0:
    return _nan_interval(level, k, method, NO_SPREAD, estimate)
  q = dist.ppf((1 + level) / 2)
  p = float(2 * dist.sf(abs(estimate) / se))
  return Interval(estimate, estimate - q * se, estimate + q * se, level, k, p, method, note)


def conflict_fraction_interval(x, level=0.95, method="batch_means"):
  """Share of steps with x < 0 (NaN skipped) and a Wilson score interval at an effective n
  (method 'independent', values on fresh batches of their own: n, a normal quantile).

  Conflicts come in runs, so n steps carry less than n independent draws: n_eff = n / tau,
  with tau = m var(batch means of the indicator) / var(indicator) (batch means, m ~ sqrt(n)),
  kept within [1, m]. A window that is all one sign has no variance to measure tau from and
  gets tau = m (n_eff = number of batches, the conservative end). The Wilson interval (Wilson
  1927) never collapses to zero width at a share of 0 or 1, unlike a normal interval; its
  quantile is Student's t with b - 1 df, b the number of batches, as n_eff is estimated from
  them (as the batch-means interval of a mean): a normal quantile covered 78% at n = 30 and 85%
  at n = 100 (AR(1) indicator, phi = 0.8, 2,000 simulations), t 90% at both.
  n >= 4 defined values; fewer: NaN interval with a note.
  """
  _check_level(level)
  x = np.asarray(x, np.float64).ravel()
  x = x[~np.isnan(x)]
  n = x.size
  if n < 4:
    share = float((x < 0).mean()) if n else float("nan")
    return _nan_interval(level, n, "wilson, effective n",
                         f"{n} defined values; an interval needs >= 4", share)
  share = float((x < 0).mean())
  n_eff, df = negative_share_draws(x, method)
  if df is None:
    return wilson_interval(share, n_eff, level, n, "wilson, independent draws")
  return wilson_interval(share, n_eff, level, n, "wilson, effective n (t quantile)",
                         f"n_eff = {n_eff:.1f}", df)


def negative_share_draws(x, method="batch_means"):
  """(n_eff, df) behind the share of x < 0 (NaN skipped; >= 4 values): n and None (a normal
  quantile) for method 'independent', else negative_share_n_eff and negative_share_df."""
  _check_method(method)
  n = int(np.sum(~np.isnan(np.asarray(x, np.float64))))
  return (n, None) if method == "independent" else (negative_share_n_eff(x), negative_share_df(n))


def negative_share_n_eff(x):
  """The effective number of independent draws behind the share of x < 0 (NaN skipped; >= 4
  values): n / tau, tau from batch means of the indicator (see conflict_fraction_interval)."""
  x = np.asarray(x, np.float64).ravel()
  ind = (x[~np.isnan(x)] < 0).astype(np.float64)
  n = ind.size
  b, m, start = _batches(n)
  var = ind.var(ddof=1)
  if var > 0:
    tau = m * ind[start:].reshape(b, m).mean(axis=1).var(ddof=1) / var
    tau = min(max(tau, 1.0), float(m))
  else:
    tau = float(m)
  return n / tau


def negative_share_df(n):
  """The degrees of freedom behind negative_share_n_eff of n values: its batches less one."""
  return _batches(n)[0] - 1


def wilson_interval(share, n_eff, level=0.95, n=None, method="wilson", note="", df=None):
  """A share's Wilson score interval (Wilson 1927) at n_eff draws: always within [0, 1], and
  never of zero width at a share of 0 or 1. Its quantile: normal, or Student's t with `df`
  degrees of freedom where n_eff was estimated from that many."""
  _check_level(level)
  z = sps.norm.ppf((1 + level) / 2) if df is None else sps.t.ppf((1 + level) / 2, df)
  centre = (share + z * z / (2 * n_eff)) / (1 + z * z / n_eff)
  half = z / (1 + z * z / n_eff) * math.sqrt(share * (1 - share) / n_eff + z * z / (4 * n_eff ** 2))
  return Interval(float(share), float(max(0.0, centre - half)), float(min(1.0, centre + half)),
                  level, int(round(n_eff)) if n is None else n, float("nan"), method, note)


def mean_of_shares(shares, n_effs, dfs=None, level=0.95):
  """The mean of k independent runs' shares (e.g. each seed's conflict fraction), within [0, 1].

  Within runs: a Wilson interval at the effective n of an equal-weight mean of k shares,
  k^2 / sum(1 / n_eff_i) (the n whose binomial variance p(1-p)/n equals the mean's when the
  runs share p); with the runs' `dfs` (negative_share_df), a t quantile at the
  Welch-Satterthwaite df of that sum. Between runs (k >= 2), as mean_of_runs: where the shares'
  s / sqrt(k) exceeds the within se sqrt(p(1-p)/n_eff), the interval also spans mean +- t_{k-1}
  s / sqrt(k) (clipped to [0, 1]), and beyond 2 within se the note says the seeds differ:
  the Wilson interval alone covered a shared share 84% of the time when the seeds' own shares
  scattered by 0.05 (3 seeds of 100 steps, share 0.3), 64% by 0.10. Runs without a share or
  n_eff are left out; none left: a NaN interval."""
  _check_level(level)
  method = ("mean of runs: Wilson at the runs' combined effective n, widened to the "
            "between-seed t interval where the seeds differ more")
  dfs = [None] * len(shares) if dfs is None else dfs
  runs = [(p, n, d) for p, n, d in zip(shares, n_effs, dfs)
          if p is not None and n is not None and math.isfinite(p) and math.isfinite(n) and n > 0]
  if not runs:
    return _nan_interval(level, 0, method, "no run has a share with an effective n")
  k = len(runs)
  share = float(np.mean([p for p, _, _ in runs]))
  n_eff = k * k / sum(1.0 / n for _, n, _ in runs)
  df = None
  if all(d is not None and d > 0 for _, _, d in runs):
    df = sum(1.0 / n for _, n, _ in runs) ** 2 / sum(1.0 / (n * n * d) for _, n, d in runs)
  within = wilson_interval(share, n_eff, level, k, method,
                           f"n_eff = {n_eff:.1f} over {k} run{'s' if k != 1 else ''}", df)
  between = float(np.std([p for p, _, _ in runs], ddof=1)) / math.sqrt(k) if k > 1 else 0.0
  se = math.sqrt(share * (1 - share) / n_eff)
  if not between > se:
    return within
  half = sps.t.ppf((1 + level) / 2, k - 1) * between
  note = within.note + (f"; {SEEDS_DIFFER}" if between > 2 * se else "")
  return within._replace(low=max(0.0, min(within.low, share - half)),
                         high=min(1.0, max(within.high, share + half)), note=note)


# ----------------------------------------------------------------------------- ranks


class Spearman(NamedTuple):
  """Spearman's rho, its two-sided permutation p, how p was computed and the smallest p possible."""
  rho: float
  p: float
  n: int
  method: str
  min_p: float = float("nan")
  note: str = ""


def _rank_corr(rx, ry):
  """Pearson correlation of rank vectors; ry may be (..., n) (one row per permutation)."""
  rx = rx - rx.mean()
  ry = ry - ry.mean(axis=-1, keepdims=True)
  return (ry @ rx) / math.sqrt((rx @ rx)) / np.sqrt((ry * ry).sum(axis=-1))


def spearman(x, y, permutations=MC_PERMUTATIONS, seed=0):
  """Spearman's rank correlation (average ranks for ties) and a two-sided permutation p.

  p is the share of pairings of y with x whose |rho| reaches the observed |rho| (the null of
  no association: every pairing equally likely). n <= 9: all n! pairings (exact); above,
  `permutations` random ones with RNG `seed`, p = (1 + hits) / (1 + permutations) (Phipson &
  Smyth 2010), so p is never 0. A large-sample t approximation (scipy.stats.spearmanr's p)
  says p = 0 for three perfectly ranked values; the exact p is 2/6 = 0.333.
  Pairs with a NaN are dropped; n >= 3 (the smallest exact p is 2/n!: 0.33 at n = 3, 0.083 at
  n = 4, 0.017 at n = 5, so n <= 4 can never reach p < 0.05); fewer, or constant ranks: p NaN
  with a note.
  """
  x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
  if x.shape != y.shape:
    raise ValueError(f"spearman needs paired values; got {x.size} and {y.size}")
  ok = ~(np.isnan(x) | np.isnan(y))
  x, y = x[ok], y[ok]
  n = x.size
  if n < SPEARMAN_MIN_N:
    return Spearman(float("nan"), float("nan"), n, "none",
                    note=f"{n} pairs; a rank correlation needs >= {SPEARMAN_MIN_N}")
  rx, ry = sps.rankdata(x), sps.rankdata(y)
  if np.ptp(rx) == 0 or np.ptp(ry) == 0:
    return Spearman(float("nan"), float("nan"), n, "none", note="constant input: no ranking")
  rho = float(_rank_corr(rx, ry))
  eps = 1e-12 * max(1.0, abs(rho))  # equal |rho| up to float rounding counts as reaching it
  if n <= EXACT_MAX_N:
    perms = np.array(list(itertools.permutations(range(n))))
    hits = (np.abs(_rank_corr(rx, ry[perms])) >= abs(rho) - eps).sum()
    return Spearman(rho, float(hits / len(perms)), n, "exact permutation",
                    min_p=2.0 / len(perms))
  rng = np.random.default_rng(seed)
  perms = rng.permuted(np.tile(ry, (permutations, 1)), axis=1)
  hits = (np.abs(_rank_corr(rx, perms)) >= abs(rho) - eps).sum()
  return Spearman(rho, float((1 + hits) / (1 + permutations)), n,
                  f"monte carlo permutation ({permutations}, seed {seed})",
                  min_p=1.0 / (1 + permutations))


# ----------------------------------------------------------------------------- multi-task


def delta_m(metrics, baseline, lower_is_better):
  """Delta_m% = mean over metrics t of (-1)^{l_t} (M_t - M_b,t) / M_b,t x 100.

  The multi-task gain over single-task baselines of Maninis et al. (2019) and Vandenhende et
  al. (2021): l_t = 1 where lower is better (losses, errors), 0 where higher is (PSNR, SSIM).
  Positive: the multi-task model is better on average. Arrays (..., T) broadcast.
  """
  m = np.asarray(metrics, np.float64)
  b = np.asarray(baseline, np.float64)
  low = np.asarray(lower_is_better, bool)
  if m.shape[-1] != b.shape[-1] or low.shape[-1:] != m.shape[-1:]:
    raise ValueError(f"delta_m: {m.shape[-1]} metrics, {b.shape[-1]} baselines, "
                     f"{low.shape} lower_is_better flags; pass one of each per task")
  if np.any(b == 0):
    raise ValueError("delta_m: a baseline metric is 0; relative change is undefined")
  sign = np.where(low, -1.0, 1.0)
  return (sign * (m - b) / b).mean(axis=-1) * 100.0
