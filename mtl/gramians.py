"""Gramian math of per-task gradients: cosines, norms, conflict shares, grouping, EMA.

Everything pairwise about per-task gradients g_1..g_T of the shared body comes from the
Gramian G = J J^T (T x T), G_ij = <g_i, g_j> (the cheap form of the MTL literature, e.g.
TorchJD's autogram). The trainer reduces, on probe steps, the per-task gradients of every
shared leaf l to G_l (L, T, T); the Gramian of a concatenation is the sum of the Gramians,
so module, block and body Gramians are sums over leaves, grouped by the model's own naming.

Zero norms: a cosine involving a zero gradient is undefined and is NaN; NaN pairs are
left out of conflict fractions and means (np.nanmean), never counted as conflicts.
Task pairs are named 'a~b' (i < j in task order).
"""
import jax
import jax.numpy as jnp
import numpy as np

from mtl.models import ipt

GROUPINGS = ipt.GROUPINGS


def split_k(size, chunk):
  """Chunks (C, size // C) that cut a contraction of `size` entries into C equal pieces of at
  most `chunk` entries, C the smallest such divisor of size; (1, size) when chunk <= 0, when
  size fits one chunk, or when size has no such divisor near size / chunk (a prime, say)."""
  if chunk <= 0 or size <= chunk:
    return 1, size
  lo = -(-size // chunk)
  for c in range(lo, 2 * lo + 1):  # pieces at least half the chunk: long enough to stream
    if size % c == 0:
      return c, size // c
  return 1, size


def leaf_gramians(task_grads, chunk=0):
  """Per-leaf Gramians G_l = J_l J_l^T, stacked (L, T, T), from a tree of (T, ...) gradients.

  A body tree with stacked layers (mtl.models.ipt: its encoder's and decoder's leaves are
  (T, layers, ...)) gives one Gramian per layer of those leaves, in the per-layer order of
  `ipt.shared_layer_names`: one batched product per stacked leaf, then the layer axis unstacked.
  chunk > 0 (config.conflicts.gramian_chunk): each product's contraction is cut into pieces of
  at most `chunk` entries (`split_k`, a reshape: no copy) that are multiplied as a batch and then
  summed, so a backend whose matmul of a tiny T x T output over millions of entries would run on
  a few cores gets one small product per piece instead. Same values up to the order of the sum.
  """
  def gram(g, stacked):
    lead = g.shape[:1 + stacked]
    pieces, piece = split_k(int(np.prod(g.shape[1 + stacked:], dtype=np.int64)), chunk)
    if pieces == 1:  # contracted in place: a flattening reshape would gather a leaf FSDP splits
      g = g.astype(jnp.float32)
      summed, batch = tuple(range(1 + stacked, g.ndim)), (1,) if stacked else ()
      return jax.lax.dot_general(g, g, ((summed, summed), (batch, batch)),
                                 precision=jax.lax.Precision.HIGHEST)  # (layers,) T x T
    flat = g.reshape(lead + (pieces, piece)).astype(jnp.float32)
    spec = "tlci,slci->lcts" if stacked else "tci,sci->cts"  # the pieces a batch axis, summed
    return jnp.einsum(spec, flat, flat, precision=jax.lax.Precision.HIGHEST).sum(axis=stacked)
  grams = jax.tree_util.tree_map(gram, task_grads, ipt.layer_stacked_leaves(task_grads))
  return jnp.stack(jax.tree_util.tree_leaves(ipt.map_bodies(ipt.unstack_layers, grams)))



# ----------------------------------------------------------------------------- derived


def _as_gram(G):
  G = np.asarray(G, np.float64)
  if G.ndim < 2 or G.shape[-1] != G.shape[-2]:
    raise ValueError(f"Gramians must have shape (..., T, T); got {G.shape}")
  return G


def norms(G):
  """Gradient norms |g_i| = sqrt(G_ii): (..., T, T) -> (..., T)."""
  G = _as_gram(G)
  return np.sqrt(np.clip(np.diagonal(G, axis1=-2, axis2=-1), 0.0, None))


def cosines(G):
  """cos(g_i, g_j) = G_ij / sqrt(G_ii G_jj): (..., T, T) -> (..., T, T) in [-1, 1].

  NaN where either gradient is zero (the diagonal too); 1 on the diagonal otherwise.
  """
  G = _as_gram(G)
  n = norms(G)
  denom = n[..., :, None] * n[..., None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    cos = np.where(denom > 0, G / np.where(denom > 0, denom, 1.0), np.nan)
  return np.clip(cos, -1.0, 1.0)  # float rounding can push |cos| a hair above 1


def update_cosines(G):
  """cos(g_i, sum_j g_j), each task against the summed update: (..., T, T) -> (..., T).

  = sum_j G_ij / sqrt(G_ii * sum_jk G_jk). NaN where g_i or the summed update is zero.
  """
  G = _as_gram(G)
  total = np.clip(G.sum(axis=(-2, -1)), 0.0, None)[..., None]
  denom = np.sqrt(np.clip(np.diagonal(G, axis1=-2, axis2=-1), 0.0, None) * total)
  with np.errstate(divide="ignore", invalid="ignore"):
    cos = np.where(denom > 0, G.sum(axis=-1) / np.where(denom > 0, denom, 1.0), np.nan)
  return np.clip(cos, -1.0, 1.0)


def pair_indices(num_tasks):
  """(i, j) for i < j, in the order every pair axis in this module uses."""
  return [(i, j) for i in range(num_tasks) for j in range(i + 1, num_tasks)]


def pair_names(task_names):
  """'a~b' for every pair i < j."""
  return [f"{task_names[i]}~{task_names[j]}" for i, j in pair_indices(len(task_names))]


def pair_values(M):
  """Upper-triangle entries of (..., T, T) as (..., P), in `pair_indices` order."""
  M = np.asarray(M)
  i, j = np.triu_indices(M.shape[-1], k=1)
  return M[..., i, j]


def conflict_fraction(G):
  """Fraction of pairs i < j with cos(g_i, g_j) < 0: (..., T, T) -> (...).

  Pairs with an undefined cosine (a zero gradient) are left out; NaN if none is defined
  (or T < 2).
  """
  return share_negative(pair_values(cosines(G)), axis=-1)


def nan_mean(x, axis=None):
  """Mean over the defined (non-NaN) entries; NaN where there are none, without warnings."""
  x = np.asarray(x, np.float64)
  count = (~np.isnan(x)).sum(axis=axis)
  total = np.where(np.isnan(x), 0.0, x).sum(axis=axis)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def share_negative(x, axis=None):
  """Share of the defined (non-NaN) entries that are < 0: how often cosines conflict."""
  x = np.asarray(x, np.float64)
  neg = np.where(np.isnan(x), np.nan, (np.nan_to_num(x) < 0).astype(np.float64))
  return nan_mean(neg, axis)


# ----------------------------------------------------------------------------- grouping


def group(gramians, layer_names, by="block"):
  """Sum per-leaf Gramians (..., L, T, T) into groups -> (names, (..., B, T, T)).

  Groups keep the order of their first leaf (the store keeps leaves in network order);
  by='layer' returns the leaves as they are, by='body' one group named 'body'.
  """
  gramians = np.asarray(gramians)
  if gramians.ndim < 3 or gramians.shape[-3] != len(layer_names):
    raise ValueError(f"gramians of shape {gramians.shape} do not match {len(layer_names)} "
                     "layer names; expected (..., L, T, T)")
  keys = ipt.group_keys(layer_names, by)
  if by == "layer":
    return list(layer_names), gramians
  names = list(dict.fromkeys(keys))
  index = np.array([names.index(k) for k in keys])
  out = np.zeros(gramians.shape[:-3] + (len(names),) + gramians.shape[-2:], np.float64)
  for b in range(len(names)):
    out[..., b, :, :] = gramians[..., index == b, :, :].sum(axis=-3, dtype=np.float64)
  return names, out



# ----------------------------------------------------------------------------- over steps


def ema(values, beta, init=0.0):
  """GradVac-style EMA over the leading (step) axis: phi <- (1 - beta) phi + beta x.

  init: phi before the first step; 0.0 as in GradVac (Wang et al. 2021, Alg. 1), or None
  to start from the first value. NaN values (undefined cosines) leave phi unchanged.
  Returns phi after every step, the shape of `values`.
  """
  if not 0.0 < beta <= 1.0:
    raise ValueError(f"ema beta={beta}; valid: 0 < beta <= 1")
  values = np.asarray(values, np.float64)
  out = np.empty_like(values)
  if values.shape[0] == 0:
    return out
  phi = np.array(values[0] if init is None else np.full(values.shape[1:], init), np.float64)
  for s, x in enumerate(values):
    phi = np.where(np.isnan(x), phi, np.where(np.isnan(phi), x, (1 - beta) * phi + beta * x))
    out[s] = phi
  return out



# ----------------------------------------------------------------------------- noise floor
# The probe splits each task's sub-batch into two independent halves a and b of equal size and
# takes one body gradient per half: 2T gradients in the order
#   [t0a, t0b, t1a, t1b, ...]   (task-major, half-minor: half h of task t sits at row 2t + h)
# and stores their per-leaf Gramians G2 (..., 2T, 2T). The step's per-task loss is the mean of
# its two halves' mean losses (equal halves: the mean over the whole sub-batch), so the task
# gradient is g_t = (g_t^a + g_t^b) / 2. Writing g_t^h = mu_t + e_t^h with independent zero-mean
# sampling noise e, <g_i^x, g_j^y> is an unbiased estimate of <mu_i, mu_j> whenever the two
# halves are different (i != j, or i == j and x != y); <g_t^a, g_t^a> is not (it adds |e|^2).
# That is what the noise-corrected cosine is built from.

HALVES = ("a", "b")


def half_names(task_names):
  """'<task>/a', '<task>/b' for every task, in the 2T order."""
  return [f"{t}/{h}" for t in task_names for h in HALVES]


def interleave_halves(grads_a, grads_b):
  """Trees of (T, ...) gradients of halves a and b -> one tree of (2T, ...) in the 2T order.

  `leaf_gramians(interleave_halves(ga, gb))` is then the per-leaf G2 (L, 2T, 2T).
  """
  def both(a, b):
    return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])
  return jax.tree_util.tree_map(both, grads_a, grads_b)


def _half_blocks(G2):
  """(..., 2T, 2T) -> (..., T, 2, T, 2) with [..., i, x, j, y] = <g_i^x, g_j^y>."""
  G2 = _as_gram(G2)
  if G2.shape[-1] % 2:
    raise ValueError(f"half-split Gramians must have an even last axis (2T); got {G2.shape}")
  t = G2.shape[-1] // 2
  return G2.reshape(G2.shape[:-2] + (t, 2, t, 2))


def task_gramian(G2):
  """Gramian of the task gradients g_t = (g_t^a + g_t^b) / 2: (..., 2T, 2T) -> (..., T, T).

  = 1/4 sum_{x,y} <g_i^x, g_j^y>: the Gramian the un-split probe would have stored, so every
  raw quantity above (cosines, norms, conflict_fraction) applies to it.
  """
  return _half_blocks(G2).sum(axis=(-3, -1)) / 4.0


def same_task_agreement(G2):
  """cos(g_t^a, g_t^b), how well a task's two independent halves agree: (..., 2T, 2T) -> (..., T).

  Near 1: the task gradient is mostly signal; near 0: mostly sampling noise (the noise floor).
  NaN where either half's gradient is zero.
  """
  B = _half_blocks(G2)
  ab = np.diagonal(B[..., 0, :, 1], axis1=-2, axis2=-1)
  aa = np.diagonal(B[..., 0, :, 0], axis1=-2, axis2=-1)
  bb = np.diagonal(B[..., 1, :, 1], axis1=-2, axis2=-1)
  denom = np.sqrt(np.clip(aa, 0.0, None) * np.clip(bb, 0.0, None))
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(denom > 0, ab / np.where(denom > 0, denom, 1.0), np.nan)


def corrected_cosine_pieces(G2):
  """Per-step unbiased pieces of the corrected cosine: (..., 2T, 2T) -> (cross, same).

  cross (..., T, T) and same (..., T):
    cross_ij: mean of <g_i^x, g_j^y> over the half pairings that are independent, all four
      (x, y) for i != j, the two x != y for i == j; an unbiased estimate of <mu_i, mu_j>.
    same_t = <g_t^a, g_t^b>: an unbiased estimate of |mu_t|^2 (may be <= 0 on a noisy step).
  `corrected_cosines` pools these over steps; mtl.stats puts intervals on the pooled ratio.
  """
  B = _half_blocks(G2)
  t = B.shape[-2]
  same = np.diagonal(B[..., 0, :, 1], axis1=-2, axis2=-1)
  cross = B.sum(axis=(-3, -1)) / 4.0
  cross[..., np.arange(t), np.arange(t)] = (same + np.diagonal(B[..., 1, :, 0], axis1=-2,
                                                               axis2=-1)) / 2.0
  return cross, same


def corrected_ratio(cross, same):
  """cross_ij / sqrt(same_i same_j); NaN where same_i <= 0 or same_j <= 0; never clipped."""
  cross, same = np.asarray(cross, np.float64), np.asarray(same, np.float64)
  prod = same[..., :, None] * same[..., None, :]
  ok = (same[..., :, None] > 0) & (same[..., None, :] > 0)
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(ok, cross / np.sqrt(np.where(ok, prod, 1.0)), np.nan)


def corrected_cosines(G2, axis=None):
  """Noise-corrected cosine, an estimate of cos(mu_i, mu_j): (..., 2T, 2T) -> (..., T, T).

  rho_ij = sum cross_ij / sqrt(sum same_i * sum same_j), the sums over `axis` (leading axes
  of G2, e.g. the step axis of a window; None: per entry, no pooling), with the pieces of
  `corrected_cosine_pieces`:
  every product pairs two independent half gradients, so sampling noise adds no bias to any
  of them, unlike the raw cosine whose |g|^2 includes |e|^2 and shrinks it towards 0.
  Pooling sums numerator and denominator pieces BEFORE the ratio: each pooled sum stays
  unbiased and its relative noise falls like 1/sqrt(steps), so the ratio is stable; a mean of
  per-step ratios would average ratios of noisy, often non-positive, denominators. The
  pooled value estimates the cosine of the window's step-concatenated mean gradients, which
  Cauchy-Schwarz keeps in [-1, 1].
  NaN ("not measurable", never clipped) where a pooled same-task product is <= 0.
  |rho| > 1 is possible on a noisy window and is reported as is: clipping would hide that
  the window is too noisy and bias window means; callers flag |rho| > 1 as noisy and may
  clip for display only. The diagonal is 1 where measurable.
  """
  cross, same = corrected_cosine_pieces(G2)
  if axis is not None:
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    nd = cross.ndim  # axes count as in G2 (..., 2T, 2T): -3 is the last leading axis
    axes = tuple(int(a) % nd if -nd <= a < nd else nd for a in axes)
    if any(a >= nd - 2 for a in axes):
      raise ValueError(f"axis={axis} is not a leading axis of Gramians {np.shape(G2)}")
    cross, same = cross.sum(axis=axes), same.sum(axis=axes)
  return corrected_ratio(cross, same)
