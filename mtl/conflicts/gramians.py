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


def gramians(task_grads):
  """Per-leaf Gramians G_l = J_l J_l^T, stacked (L, T, T), from a tree of (T, ...) gradients."""
  def gram(g):
    flat = g.reshape(g.shape[0], -1).astype(jnp.float32)
    return jnp.einsum("ti,si->ts", flat, flat, precision=jax.lax.Precision.HIGHEST)
  return jnp.stack([gram(g) for g in jax.tree_util.tree_leaves(task_grads)])



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


def norm_ratios(G):
  """Pairwise magnitude ratios R_ij = |g_i| / |g_j|: (..., T, T) -> (..., T, T).

  Pairwise rather than a single max/min so that a figure can say which task dominates
  which; max/min over tasks is R.max(axis=(-2, -1)). x/0 = inf, 0/0 = NaN.
  """
  n = norms(G)
  with np.errstate(divide="ignore", invalid="ignore"):
    return n[..., :, None] / n[..., None, :]


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

