"""Gradient aggregators and loss weightings for multi-task training, as pure jit-able JAX functions.

Aggregators turn the (T, D) matrix J of per-task gradients of the shared body into its (D,) update,
with the scaling conventions of TorchJD 0.18 (Quinton & Rey 2024): `get('upgrad')(J)` equals
`torchjd.aggregation.UPGrad()(J)`. Every method here needs only the Gramian G = J J^T (T x T):
`get_weighting(name)` maps G to the (T,) task weights w and the aggregator returns w @ J, so the
trainer can apply weights to Gramians it already has; nothing bigger than (T, D) is materialised.

Randomness and state are explicit: PCGrad and GradVac take `key` (random visiting orders; without a
key the order is 0, 1, ..., T-1) or an explicit `order`; GradVac carries its EMA of cosine
targets as state in and out (`init('gradvac', T)` gives the first). Iterative solvers run a
bounded number of iterations inside jit; each one's stopping rule and accuracy is stated with it.

Loss weightings (uncertainty, DWA, RLW, FAMO) follow LibMTL (Lin & Zhang 2023) and are built by
`get_loss_weighting(name, num_tasks, **kwargs)`; see `LossWeighting`.
"""
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


# ---------------------------------------------------------------------------------------------
# Small linear-algebra helpers (all on T x T matrices).


def gramian(jac):
  """G = J J^T of the (T, D) per-task gradients; (T, T), accumulated in float32 or wider."""
  acc = jnp.promote_types(jac.dtype, jnp.float32)
  return jnp.einsum("td,sd->ts", jac, jac, preferred_element_type=acc)


def _normalize(g, eps):
  # TorchJD's `normalize`: divide by trace (||J||_F^2); an all-but-zero J gives a zero Gramian.
  tr = jnp.trace(g)
  return jnp.where(tr < eps, jnp.zeros_like(g), g / jnp.where(tr < eps, 1.0, tr))


def _eps(dtype):
  return jnp.finfo(dtype).eps


def _pref(pref_vector, t, dtype):
  # TorchJD's default preference vector is the mean weighting 1/T.
  if pref_vector is None:
    return jnp.full(t, 1.0 / t, dtype)
  return jnp.asarray(pref_vector, dtype)


def _pinv_psd(g):
  """Pseudo-inverse of a PSD matrix with torch.linalg.pinv's default cutoff (T * eps * max eig)."""
  lam, v = jnp.linalg.eigh(g)
  cutoff = g.shape[0] * _eps(g.dtype) * jnp.max(jnp.abs(lam))
  inv = jnp.where(jnp.abs(lam) > cutoff, 1.0 / jnp.where(jnp.abs(lam) > cutoff, lam, 1.0), 0.0)
  return (v * inv) @ v.T


def solve_nonneg_qp(a, q, max_iter=None):
  """argmin_z 1/2 z^T A z + q^T z subject to z >= 0, for a positive-definite (T, T) A.

  Lawson & Hanson's (1974) active-set method: each iteration solves one equality-constrained
  system on the current free set, so on termination the result is the exact minimiser up to the
  rounding of that linear solve (no solver tolerance). It terminates in finitely many steps
  (typically <= 2T); `max_iter` (default 10 T + 10) only bounds the while_loop.
  """
  t = a.shape[0]
  max_iter = 10 * t + 10 if max_iter is None else max_iter
  eye = jnp.eye(t, dtype=a.dtype)
  scale = jnp.max(jnp.abs(a)) + jnp.max(jnp.abs(q)) + jnp.finfo(a.dtype).tiny
  tol = 64 * t * _eps(a.dtype) * scale  # KKT slack below rounding of A z + q counts as optimal

  def solve_free(free):
    both = free[:, None] & free[None, :]
    s = jnp.linalg.solve(jnp.where(both, a, eye), jnp.where(free, -q, 0.0))
    return jnp.where(free, s, 0.0)

  def cond(c):
    _, _, _, it, done = c
    return (~done) & (it < max_iter)

  def body(c):
    z, free, inner, it, _ = c
    neg_grad = -(a @ z + q)
    cand = jnp.where(free, -jnp.inf, neg_grad)
    j = jnp.argmax(cand)
    converged = (~inner) & (cand[j] <= tol)
    free = jnp.where((~inner) & ~converged, free.at[j].set(True), free)
    s = solve_free(free)
    feasible = jnp.all(jnp.where(free, s > 0, True))
    blocking = free & (s <= 0)
    den = z - s  # 0 only for a variable at 0 whose solve is 0: it blocks at once
    ratio = jnp.where(blocking, jnp.where(den > 0, z / jnp.where(den > 0, den, 1.0), 0.0), jnp.inf)
    step = jnp.minimum(jnp.min(ratio), 1.0)
    z_new = jnp.where(feasible, s, z + step * (s - z))
    free_new = jnp.where(feasible, free, free & (z_new > 0) & ~(blocking & (ratio <= step)))
    z_new = jnp.where(free_new, z_new, 0.0)
    z_new = jnp.where(converged, z, z_new)
    free_new = jnp.where(converged, free, free_new)
    return z_new, free_new, ~feasible & ~converged, it + 1, converged

  init = (jnp.zeros_like(q), jnp.zeros(t, bool), jnp.array(False), jnp.array(0), jnp.array(False))
  return jax.lax.while_loop(cond, body, init)[0]


def solve_simplex_qp(h, f, ridge, max_iter=None):
  """argmin_w 1/2 w^T (H + ridge I) w + f^T w over the probability simplex, H PSD (T, T).

  Primal active-set method (Nocedal & Wright 2006, Alg. 16.3) started at the best vertex; each
  step solves the bordered KKT system on the free set, so the result is exact up to that solve.
  `ridge` > 0 keeps the bordered systems non-singular when rows of J are linearly dependent; it
  moves the solution only along directions that J maps to ~0.
  """
  t = h.shape[0]
  max_iter = 10 * t + 10 if max_iter is None else max_iter
  h = h + ridge * jnp.eye(t, dtype=h.dtype)
  scale = jnp.max(jnp.abs(h)) + jnp.max(jnp.abs(f)) + jnp.finfo(h.dtype).tiny
  tol = 64 * t * _eps(h.dtype) * scale
  eye = jnp.eye(t, dtype=h.dtype)

  def solve_free(free):
    p = free.astype(h.dtype)
    k = jnp.block([[jnp.where(free[:, None] & free[None, :], h, eye), p[:, None]],
                   [p[None, :], jnp.zeros((1, 1), h.dtype)]])
    rhs = jnp.concatenate([jnp.where(free, -f, 0.0), jnp.ones((1,), h.dtype)])
    return jnp.where(free, jnp.linalg.solve(k, rhs)[:t], 0.0)

  def cond(c):
    return (~c[4]) & (c[3] < max_iter)

  def body(c):
    w, free, inner, it, _ = c
    grad = h @ w + f
    lam = jnp.sum(jnp.where(free, grad, 0.0)) / jnp.sum(free)
    cand = jnp.where(free, jnp.inf, grad - lam)
    j = jnp.argmin(cand)
    converged = (~inner) & (cand[j] >= -tol)
    free = jnp.where((~inner) & ~converged, free.at[j].set(True), free)
    s = solve_free(free)
    feasible = jnp.all(jnp.where(free, s > 0, True))
    blocking = free & (s <= 0)
    den = w - s  # 0 only for a variable at 0 whose solve is 0: it blocks at once
    ratio = jnp.where(blocking, jnp.where(den > 0, w / jnp.where(den > 0, den, 1.0), 0.0), jnp.inf)
    step = jnp.minimum(jnp.min(ratio), 1.0)
    w_new = jnp.where(feasible, s, w + step * (s - w))
    free_new = jnp.where(feasible, free, free & (w_new > 0) & ~(blocking & (ratio <= step)))
    w_new = jnp.where(free_new, w_new, 0.0)
    w_new = w_new / jnp.sum(w_new)  # guards the simplex against rounding drift
    w_new = jnp.where(converged, w, w_new)
    free_new = jnp.where(converged, free, free_new)
    return w_new, free_new, ~feasible & ~converged, it + 1, converged

  k0 = jnp.argmin(0.5 * jnp.diag(h) + f)
  w0 = jax.nn.one_hot(k0, t, dtype=h.dtype)
  init = (w0, w0 > 0, jnp.array(False), jnp.array(0), jnp.array(False))
  return jax.lax.while_loop(cond, body, init)[0]


# ---------------------------------------------------------------------------------------------
# Gramian weightings: (T, T) Gramian -> (T,) weights. Names and defaults follow TorchJD 0.18.


def sum_weighting():
  return lambda g: jnp.ones(g.shape[0], g.dtype)


def mean_weighting():
  return lambda g: jnp.full(g.shape[0], 1.0 / g.shape[0], g.dtype)


def upgrad_weighting(pref_vector=None, norm_eps=1e-4, reg_eps=1e-4):
  """UPGrad (Quinton & Rey 2024): sum over tasks i of the dual-cone projection weights of J^T u_i.

  Projection of J^T u onto the dual cone of the rows of J has weights v = argmin v^T G v s.t.
  v >= u (their Prop. 1), solved on G / tr(G) + reg_eps I as TorchJD's quadprog projector does;
  here with `solve_nonneg_qp` on z = v - u (exact active set).
  """
  def weighting(g):
    t = g.shape[0]
    pref = _pref(pref_vector, t, g.dtype)
    a = _normalize(g, norm_eps) + reg_eps * jnp.eye(t, dtype=g.dtype)
    u = jnp.diag(pref)
    z = jax.vmap(lambda ui: solve_nonneg_qp(a, a @ ui))(u)
    return jnp.sum(u + z, axis=0)
  return weighting


def mgda_weighting(epsilon=1e-3, max_iters=100):
  """MGDA (Désidéri 2012) by the Frank-Wolfe solver of Sener & Koltun (2018, Alg. 2), as TorchJD.

  Same iterations and stopping rule (step gamma < epsilon or max_iters) as TorchJD, so the weights
  agree with it to rounding; they are within the Frank-Wolfe gap of the exact min-norm point.
  """
  def weighting(g):
    t = g.shape[0]

    def cond(c):
      return (c[1] < max_iters) & ~c[2]

    def body(c):
      alpha, it, _ = c
      ga = g @ alpha
      k = jnp.argmin(ga)
      a, b, cc = ga[k], alpha @ ga, g[k, k]
      den = b + cc - 2 * a
      ratio = (b - a) / jnp.where(den == 0, 1.0, den)
      gamma = jnp.where(cc <= a, 1.0, jnp.where(b <= a, 0.0, ratio))
      alpha = (1 - gamma) * alpha + gamma * jax.nn.one_hot(k, t, dtype=g.dtype)
      return alpha, it + 1, gamma < epsilon

    init = (jnp.full(t, 1.0 / t, g.dtype), jnp.array(0), jnp.array(False))
    return jax.lax.while_loop(cond, body, init)[0]
  return weighting


def imtl_g_weighting():
  """IMTL-G (Liu et al. 2021) as generalised by Quinton & Rey (2024): pinv(G) sqrt(diag G) / sum."""
  def weighting(g):
    v = _pinv_psd(g) @ jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))
    s = jnp.sum(v)
    small = jnp.abs(s) < 1e-12
    return jnp.where(small, jnp.zeros_like(v), v / jnp.where(small, 1.0, s))
  return weighting


def aligned_mtl_weighting(pref_vector=None, scale_mode="min"):
  """Aligned-MTL (Senushkin et al. 2023, Alg. 1): B pref, B = sqrt(scale) V S^-1/2 V^T on ran G."""
  if scale_mode not in ("min", "median", "rmse"):
    raise ValueError(f"aligned_mtl scale_mode={scale_mode!r}; valid: 'min', 'median', 'rmse'")

  def weighting(g):
    t = g.shape[0]
    pref = _pref(pref_vector, t, g.dtype)
    lam, v = jnp.linalg.eigh(g)
    lam, v = lam[::-1], v[:, ::-1]  # descending, like TorchJD's argsort
    keep = lam > jnp.max(lam) * t * _eps(g.dtype)
    rank = jnp.sum(keep)
    safe = jnp.where(keep, lam, 1.0)
    if scale_mode == "min":
      scale = jnp.min(jnp.where(keep, lam, jnp.inf))
    elif scale_mode == "median":  # torch.median: the lower middle of the kept eigenvalues
      scale = lam[jnp.maximum(rank - 1 - (rank - 1) // 2, 0)]
    else:
      scale = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1)
    inv_sqrt = jnp.where(keep, 1.0 / jnp.sqrt(safe), 0.0)
    b = jnp.sqrt(jnp.where(rank > 0, scale, 1.0)) * (v * inv_sqrt) @ v.T
    b = jnp.where(rank > 0, b, jnp.eye(t, dtype=g.dtype))
    return b @ pref
  return weighting


def cagrad_weighting(c=0.5, norm_eps=1e-4, bisection_steps=64):
  """CAGrad (Liu et al. 2021, Alg. 1) with TorchJD's conventions (G normalised by its trace).

  The inner problem min_{w in simplex} w^T G g0 + c|g0| |J^T w| (convex; TorchJD: cvxpy/Clarabel)
  is solved here as the fixed point nu = |J^T w(nu)| of the simplex QPs
  w(nu) = argmin 1/2 w^T G w + (nu / (c|g0|)) w^T G 1/T (the variational form of the norm; the
  derivative of the partial minimum is monotone in nu, so bisection on nu is exact). Accuracy:
  nu to 2^-bisection_steps of max_i |g_i| (below float64 rounding at the default), QPs exact.
  """
  if c < 0:
    raise ValueError(f"cagrad c={c}; valid: c >= 0")

  def weighting(g):
    t = g.shape[0]
    gn = _normalize(g, norm_eps)
    ones = jnp.full(t, 1.0 / t, g.dtype)
    b = gn @ ones
    sqrt_phi = c * jnp.sqrt(jnp.maximum(ones @ b, 0.0))
    ridge = jnp.sqrt(_eps(g.dtype)) * 1e-4  # gn has trace 1
    def w_of(nu):
      return solve_simplex_qp(gn, nu / jnp.maximum(sqrt_phi, 1e-30) * b, ridge)
    def norm_of(w):
      return jnp.sqrt(jnp.maximum(w @ gn @ w, 0.0))
    hi0 = jnp.sqrt(jnp.max(jnp.diag(gn)))
    def bisect(_, lohi):
      lo, hi = lohi
      mid = 0.5 * (lo + hi)
      below = norm_of(w_of(mid)) > mid  # derivative of the partial minimum < 0: optimum above mid
      return jnp.where(below, mid, lo), jnp.where(below, hi, mid)
    lo, hi = jax.lax.fori_loop(0, bisection_steps, bisect, (jnp.zeros((), g.dtype), hi0))
    w_opt = w_of(0.5 * (lo + hi))
    gw = norm_of(w_opt)
    big = gw >= norm_eps
    weights = ones + sqrt_phi / jnp.where(big, gw, 1.0) * w_opt
    fallback = jnp.where(sqrt_phi > 0, jnp.zeros_like(ones), ones)
    return jnp.where(big & (sqrt_phi > 0), weights, fallback)
  return weighting


def nash_mtl_weighting(max_norm=1.0, newton_steps=100, n_tasks=None):
  """Nash-MTL (Navon et al. 2022): the bargaining solution alpha > 0 of G alpha = 1 / alpha.

  TorchJD (after the authors' code) approaches it by 20 sequential convex (ECOS) solves; here it
  is the minimiser of the self-concordant 1/2 a^T G a - sum log a, by damped Newton (Nesterov
  2004, Sec. 4.1.5), quadratically convergent: newton_steps=100 reaches rounding whenever the
  solution exists (G positive definite on the positive orthant). Then, as TorchJD, |alpha @ J| is
  clipped to max_norm (0 disables). `n_tasks` is accepted for TorchJD's signature and unused.
  """
  del n_tasks

  def weighting(g):
    a0 = 1.0 / jnp.sqrt(jnp.maximum(jnp.diag(g), jnp.finfo(g.dtype).tiny))
    def newton(_, a):
      grad = g @ a - 1.0 / a
      hess = g + jnp.diag(1.0 / a**2)
      step = jnp.linalg.solve(hess, grad)
      dec = jnp.sqrt(jnp.maximum(grad @ step, 0.0))
      a_new = a - jnp.where(dec > 0.25, 1.0 / (1.0 + dec), 1.0) * step
      return jnp.where(jnp.all(jnp.isfinite(a_new)) & jnp.all(a_new > 0), a_new, a)
    alpha = jax.lax.fori_loop(0, newton_steps, newton, a0.astype(g.dtype))
    if max_norm > 0:
      norm = jnp.sqrt(jnp.maximum(alpha @ g @ alpha, 0.0))
      alpha = jnp.where(norm > max_norm, alpha / jnp.where(norm > 0, norm, 1.0) * max_norm, alpha)
    return alpha
  return weighting


def _orders(key, t, n):
  # One independent random permutation of range(n) per task, like TorchJD's per-task randperm.
  if key is None:
    return jnp.tile(jnp.arange(n), (t, 1))
  return jax.vmap(lambda k: jax.random.permutation(k, n))(jax.random.split(key, t))


def pcgrad_weighting():
  """PCGrad (Yu et al. 2020): each g_i is projected, in random order, off each conflicting g_j.

  Call as weighting(G, key=None, order=None): `order` (T, T) gives task i's visiting order of all
  tasks (i itself is skipped), else it is drawn from `key`, else 0..T-1. TorchJD draws it with
  torch.randperm; given the same orders the weights agree to rounding.
  """
  def weighting(g, key=None, order=None):
    t = g.shape[0]
    order = _orders(key, t, t) if order is None else jnp.asarray(order)
    def per_task(i, perm):
      def visit(k, cw):
        j = perm[k]
        ip = g[j] @ cw
        upd = (j != i) & (ip < 0)
        return cw.at[j].add(jnp.where(upd, -ip / jnp.where(g[j, j] == 0, 1.0, g[j, j]), 0.0))
      return jax.lax.fori_loop(0, t, visit, jax.nn.one_hot(i, t, dtype=g.dtype))
    return jnp.sum(jax.vmap(per_task)(jnp.arange(t), order), axis=0)
  return weighting


def gradvac_init(num_tasks, dtype=jnp.float32):
  """GradVac's first state: EMA targets phi_hat (T, T), zeros as in TorchJD."""
  return jnp.zeros((num_tasks, num_tasks), dtype)


def gradvac_weighting(beta=0.5, eps=1e-8):
  """GradVac (Wang et al. 2021) on the Gramian, as TorchJD.

  Call as weighting(G, state, key=None, order=None) -> (w, new_state).

  For task i, tasks j != i are visited in `order[i]` (a permutation of the T-1 others, as indices
  into them), drawn from `key` if not given, else 0..T-2. When the cosine of the (corrected) g_i
  with g_j is below the EMA target phi_hat_ij, a multiple of g_j is added to g_i; phi_hat_ij then
  moves towards that cosine by beta. The visit is sequential (each update changes the next cosine).
  """
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"gradvac beta={beta}; valid: 0 <= beta <= 1")

  def weighting(g, state, key=None, order=None):
    t = g.shape[0]
    order = _orders(key, t, t - 1) if order is None else jnp.asarray(order)
    diag_sqrt = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))

    def per_task(i, carry):
      coeffs, phi = carry
      others = jnp.arange(t - 1)
      others = jnp.where(others >= i, others + 1, others)  # the T-1 tasks other than i, ascending
      def visit(k, c):
        ci, phi = c
        j = others[order[i, k]]
        cg = ci @ g
        norm_i = jnp.sqrt(jnp.maximum(cg @ ci, 0.0))
        norm_j = diag_sqrt[j]
        phi_ij = cg[j] / (norm_i * norm_j + eps)
        phi_hat = phi[i, j]
        s1 = jnp.sqrt(jnp.maximum(1.0 - phi_ij * phi_ij, 0.0))
        s2 = jnp.sqrt(jnp.maximum(1.0 - phi_hat * phi_hat, 0.0))
        w = norm_i * (phi_hat * s1 - phi_ij * s2) / (norm_j * s2 + eps)
        ci = ci.at[j].add(jnp.where(phi_ij < phi_hat, w, 0.0))
        phi = phi.at[i, j].set((1.0 - beta) * phi_hat + beta * phi_ij)
        return ci, phi
      ci, phi = jax.lax.fori_loop(0, t - 1, visit, (jax.nn.one_hot(i, t, dtype=g.dtype), phi))
      return coeffs.at[i].set(ci), phi

    init = (jnp.zeros((t, t), g.dtype), state.astype(g.dtype))
    coeffs, phi = jax.lax.fori_loop(0, t, per_task, init)
    return jnp.sum(coeffs, axis=0), phi
  return weighting


WEIGHTINGS = {
    "sum": sum_weighting,
    "mean": mean_weighting,
    "upgrad": upgrad_weighting,
    "mgda": mgda_weighting,
    "imtl_g": imtl_g_weighting,
    "aligned_mtl": aligned_mtl_weighting,
    "cagrad": cagrad_weighting,
    "nash_mtl": nash_mtl_weighting,
    "pcgrad": pcgrad_weighting,
    "gradvac": gradvac_weighting,
}
RANDOM = ("pcgrad", "gradvac")  # take key= / order=
STATEFUL = ("gradvac",)  # take and return state; first state from `init(name, T)`


def get_weighting(name, **kwargs):
  """The Gramian weighting of `name`: (T, T) G -> (T,) w (extra args: RANDOM, STATEFUL)."""
  if name not in WEIGHTINGS:
    raise ValueError(f"unknown aggregator {name!r}; valid: {sorted(WEIGHTINGS)}")
  return WEIGHTINGS[name](**kwargs)


def init(name, num_tasks, dtype=jnp.float32):
  """First state of a stateful aggregator (None for stateless ones)."""
  return gradvac_init(num_tasks, dtype) if name == "gradvac" else None


def get(name, **kwargs):
  """Aggregator `name`: (T, D) per-task gradients -> (D,) update, TorchJD 0.18's conventions.

  Stateless: agg(J, **extra) -> update, with extra = key/order for pcgrad. GradVac:
  agg(J, state, key=None, order=None) -> (update, new_state).
  """
  weighting = get_weighting(name, **kwargs)
  if name in STATEFUL:
    def agg_stateful(jac, state, **extra):
      w, state = weighting(gramian(jac), state, **extra)
      return (w.astype(jac.dtype) @ jac), state
    return agg_stateful

  def agg(jac, **extra):
    if name == "sum":  # no Gramian needed for the fixed weightings
      return jnp.sum(jac, axis=0)
    if name == "mean":
      return jnp.mean(jac, axis=0)
    w = weighting(gramian(jac), **extra)
    return w.astype(jac.dtype) @ jac
  return agg


def per_leaf(agg):
  """Applies a stateless aggregator separately to each leaf of a pytree of (T, ...) gradients."""
  def apply(tree, **extra):
    def leaf(x):
      return agg(x.reshape(x.shape[0], -1), **extra).reshape(x.shape[1:])
    return jax.tree.map(leaf, tree)
  return apply


# ---------------------------------------------------------------------------------------------
# Loss weightings: per-task losses -> one scalar loss. LibMTL's formulas (Lin & Zhang 2023).


class LossWeighting(NamedTuple):
  """A pure loss weighting for T tasks.

  init() -> (params, state): params are trained with the model (uncertainty's log-variances; an
    empty dict otherwise), state is carried by the trainer but not differentiated.
  combine(params, state, losses, key=None) -> (total, weights): the scalar to differentiate (with
    respect to the model through `losses` and to `params`) and the (T,) weights for logging.
  update(state, losses, new_losses) -> state: after the optimiser step; `losses` are the ones
    combined, `new_losses` the same batch's losses after the step (FAMO; others ignore them).
  """
  init: Callable[[], Any]
  combine: Callable[..., Any]
  update: Callable[..., Any]


def _keep(state, losses, new_losses=None):
  del losses, new_losses
  return state


def uncertainty_weighting(num_tasks, init_log_var=-0.5):
  """Kendall et al. (2018) as LibMTL's UW: sum_i L_i / (2 exp(s_i)) + s_i / 2, s = log var."""
  def init():
    return {"log_var": jnp.full((num_tasks,), init_log_var, jnp.float32)}, {}

  def combine(params, state, losses, key=None):
    del state, key
    s = params["log_var"]
    return jnp.sum(losses / (2 * jnp.exp(s)) + s / 2), jax.lax.stop_gradient(1 / (2 * jnp.exp(s)))
  return LossWeighting(init, combine, _keep)


def dwa_weighting(num_tasks, temperature=2.0, steps_per_epoch=100):
  """Dynamic Weight Average (Liu et al. 2019): T softmax((L_{e-1} / L_{e-2}) / temperature).

  L_e is the mean loss of epoch e (here `steps_per_epoch` calls of `update`); weights are 1 until
  two epochs are complete, as in LibMTL.
  """
  if steps_per_epoch < 1:
    raise ValueError(f"dwa steps_per_epoch={steps_per_epoch}; valid: an integer >= 1")

  def init():
    return {}, {"history": jnp.ones((2, num_tasks), jnp.float32),
                "epochs": jnp.zeros((), jnp.int32),
                "running": jnp.zeros((num_tasks,), jnp.float32),
                "count": jnp.zeros((), jnp.int32)}

  def combine(params, state, losses, key=None):
    del params, key
    ratio = state["history"][1] / state["history"][0]
    w = jnp.where(state["epochs"] >= 2, num_tasks * jax.nn.softmax(ratio / temperature), 1.0)
    w = jax.lax.stop_gradient(w.astype(losses.dtype))
    return jnp.sum(w * losses), w

  def update(state, losses, new_losses=None):
    del new_losses
    running = state["running"] + jax.lax.stop_gradient(losses).astype(jnp.float32)
    count = state["count"] + 1
    done = count >= steps_per_epoch
    history = jnp.where(done, jnp.stack([state["history"][1], running / count]), state["history"])
    return {"history": history, "epochs": state["epochs"] + done.astype(jnp.int32),
            "running": jnp.where(done, 0.0, running), "count": jnp.where(done, 0, count)}
  return LossWeighting(init, combine, update)


def rlw_weighting(num_tasks):
  """Random Loss Weighting (Lin et al. 2022) as LibMTL: softmax of a standard normal draw."""
  def init():
    return {}, {}

  def combine(params, state, losses, key=None):
    del params, state
    if key is None:
      raise ValueError("rlw needs key=<a jax.random key>; got None")
    w = jax.nn.softmax(jax.random.normal(key, (num_tasks,))).astype(losses.dtype)
    return jnp.sum(w * losses), w
  return LossWeighting(init, combine, _keep)


def famo_weighting(num_tasks, lr=0.025, weight_decay=1e-3, eps=1e-8, betas=(0.9, 0.999)):
  """FAMO (Liu et al. 2023) as LibMTL: weights z / (c D), D = L + 1e-8, z = softmax(logits).

  c = sum z / D, so the weights sum to 1.

  The gradient of sum_i w_i L_i equals that of FAMO's sum_i z_i log(L_i) / c. `update` moves the
  logits by torch.optim.Adam (L2 weight decay) along the softmax-Jacobian product with the
  decrease of log losses from `losses` to `new_losses`.
  """
  b1, b2 = betas

  def init():
    z = jnp.zeros((num_tasks,), jnp.float32)
    return {}, {"logits": z, "m": z, "v": z, "step": jnp.zeros((), jnp.int32)}

  def combine(params, state, losses, key=None):
    del params, key
    z = jax.nn.softmax(state["logits"]).astype(losses.dtype)
    d = jax.lax.stop_gradient(losses) + 1e-8
    w = jax.lax.stop_gradient(z / d / jnp.sum(z / d))
    return jnp.sum(w * losses), w

  def update(state, losses, new_losses):
    x = state["logits"]
    def log_d(l):
      return jnp.log(jax.lax.stop_gradient(l) + 1e-8)
    delta = (log_d(losses) - log_d(new_losses)).astype(x.dtype)
    z = jax.nn.softmax(x)
    grad = z * (delta - z @ delta) + weight_decay * x  # softmax VJP, then Adam's L2 decay
    step = state["step"] + 1
    m = b1 * state["m"] + (1 - b1) * grad
    v = b2 * state["v"] + (1 - b2) * grad * grad
    m_hat = m / (1 - b1 ** step.astype(x.dtype))
    v_hat = v / (1 - b2 ** step.astype(x.dtype))
    return {"logits": x - lr * m_hat / (jnp.sqrt(v_hat) + eps), "m": m, "v": v, "step": step}
  return LossWeighting(init, combine, update)


LOSS_WEIGHTINGS = {
    "uncertainty": uncertainty_weighting,
    "dwa": dwa_weighting,
    "rlw": rlw_weighting,
    "famo": famo_weighting,
}


def get_loss_weighting(name, num_tasks, **kwargs):
  """Loss weighting `name` for `num_tasks` tasks (a LossWeighting of pure functions)."""
  if name not in LOSS_WEIGHTINGS:
    raise ValueError(f"unknown loss weighting {name!r}; valid: {sorted(LOSS_WEIGHTINGS)}")
  return LOSS_WEIGHTINGS[name](num_tasks, **kwargs)


# ---------------------------------------------------------------------------------------------
# In the training step: config.mtl -> the body's update gradient, loss weights, carried state.


def _aggregator_args(mtl_cfg):
  args = dict(mtl_cfg.get("aggregator_args", {}) or {})
  return args.pop("per_leaf", False), args


def aggregating(mtl_cfg):
  """Whether the step needs per-task body gradients (any aggregator other than 'sum')."""
  return mtl_cfg is not None and mtl_cfg.get("aggregator", "sum") != "sum"


def check_config(mtl_cfg, num_tasks, schedule="all"):
  """ValueError (one line) for an unknown aggregator / loss weighting or a bad argument."""
  if mtl_cfg is None:
    return
  name = mtl_cfg.get("aggregator", "sum")
  if (name != "sum" or mtl_cfg.get("loss_weighting", "")) and schedule != "all":
    raise ValueError(f"mtl.aggregator={name!r} / mtl.loss_weighting needs schedule='all' (every "
                     f"task in every step); got schedule={schedule!r}")
  _, args = _aggregator_args(mtl_cfg)
  try:
    get_weighting(name, **args)
  except TypeError as e:
    raise ValueError(f"mtl.aggregator_args={args} for {name!r}: {e}") from None
  lw = mtl_cfg.get("loss_weighting", "")
  if lw:
    try:
      get_loss_weighting(lw, num_tasks, **dict(mtl_cfg.get("loss_weighting_args", {}) or {}))
    except TypeError as e:
      raise ValueError(f"mtl.loss_weighting_args for {lw!r}: {e}") from None


def _loss_weighting(mtl_cfg, num_tasks):
  name = mtl_cfg.get("loss_weighting", "") if mtl_cfg is not None else ""
  if not name:
    return None
  return get_loss_weighting(name, num_tasks, **dict(mtl_cfg.get("loss_weighting_args", {}) or {}))


def init_step_state(mtl_cfg, num_tasks, num_leaves):
  """(trained params, carried state) that config.mtl adds to a run; ({}, {}) for plain sums.

  Trained params (uncertainty's log-variances) live in params['loss_weighting'] so the run's
  optimizer trains them; the carried state (GradVac's EMA targets, DWA's loss history, FAMO's
  logits) lives in TrainState.mtl_state.
  """
  params, state = {}, {}
  if aggregating(mtl_cfg) and mtl_cfg.aggregator in STATEFUL:
    per_leaf, _ = _aggregator_args(mtl_cfg)
    first = init(mtl_cfg.aggregator, num_tasks)
    state["aggregator"] = jnp.tile(first, (num_leaves, 1, 1)) if per_leaf else first
  lw = _loss_weighting(mtl_cfg, num_tasks)
  if lw is not None:
    lw_params, lw_state = lw.init()
    if lw_params:
      params = lw_params
    if lw_state:
      state["loss_weighting"] = lw_state
  return params, state


def combine_losses(mtl_cfg, params, state, losses, key):
  """The scalar the step differentiates and the (T,) loss weights (ones without a weighting)."""
  lw = _loss_weighting(mtl_cfg, losses.shape[0])
  if lw is None:
    return jnp.sum(losses), jnp.ones_like(losses)
  return lw.combine(params, state.get("loss_weighting", {}), losses, key=key)


def update_loss_state(mtl_cfg, state, losses, new_losses):
  """The carried loss-weighting state after the optimizer step (DWA, FAMO)."""
  lw = _loss_weighting(mtl_cfg, losses.shape[0])
  if lw is None or "loss_weighting" not in state:
    return state
  return dict(state, loss_weighting=lw.update(state["loss_weighting"], losses, new_losses))


def aggregate_tree(task_grads, mtl_cfg, key=None, state=None):
  """The update gradient of a pytree of (T, ...) per-task gradients under config.mtl.

  Whole tree by default: one body Gramian (the sum of the per-leaf Gramians, i.e. the Gramian of
  the flattened (T, D) gradients), one weight vector w, update sum_t w_t g_t per leaf, so no
  (T, D) concatenation is formed. aggregator_args.per_leaf=True: each leaf its own Gramian and
  weights. Returns (update tree, new state dict, weights (T,) or (L, T)).
  """
  from mtl.conflicts import gramians  # the step's own per-leaf Gramian (float32, HIGHEST)
  state = {} if state is None else state
  name = mtl_cfg.aggregator
  per_leaf, args = _aggregator_args(mtl_cfg)
  weighting = get_weighting(name, **args)
  leaves, treedef = jax.tree_util.tree_flatten(task_grads)
  grams = gramians.leaf_gramians(task_grads)  # (L, T, T)
  num_leaves = grams.shape[0]

  def weigh(g, k, s):
    extra = {"key": k} if name in RANDOM else {}
    if name in STATEFUL:
      return weighting(g, s, **extra)
    return weighting(g, **extra), s

  s_in = state.get("aggregator")
  if s_in is None and name in STATEFUL:  # a state built without config.mtl (e.g. analysis)
    first = init(name, grams.shape[-1])
    s_in = jnp.tile(first, (num_leaves, 1, 1)) if per_leaf else first
  if per_leaf:
    keys = (jax.random.split(key, num_leaves) if key is not None and name in RANDOM
            else [None] * num_leaves)
    ws, ss = [], []
    for l in range(num_leaves):  # a loop, not vmap: the while_loop solvers batch poorly on CPU
      w, s = weigh(grams[l], keys[l], None if s_in is None else s_in[l])
      ws.append(w)
      ss.append(s)
    weights = jnp.stack(ws)
    new_s = jnp.stack(ss) if s_in is not None else None
    out = [jnp.tensordot(w.astype(x.dtype), x, axes=1) for w, x in zip(ws, leaves)]
  else:
    weights, new_s = weigh(grams.sum(0), key, s_in)
    out = [jnp.tensordot(weights.astype(x.dtype), x, axes=1) for x in leaves]
  if s_in is not None:
    state = dict(state, aggregator=new_s)
  return jax.tree_util.tree_unflatten(treedef, out), state, weights


def relative_step_times(step_for, make_args, names=("sum", "mean", "pcgrad", "gradvac", "cagrad",
                                                    "upgrad", "mgda"), repeats=5):
  """Median wall time of each aggregator's step relative to 'sum' (interleaved rounds).

  step_for(name) -> a jitted step; make_args(name) -> its arguments (fresh each call, since steps
  may donate). Each round times every method once, so load drift hits all alike.
  """
  import time
  import numpy as np
  fns = {n: step_for(n) for n in names}
  for n in names:  # compile and warm up
    jax.block_until_ready(fns[n](*make_args(n)))
  times = {n: [] for n in names}
  for _ in range(repeats):
    for n in names:
      args = make_args(n)
      jax.block_until_ready(args)
      t0 = time.perf_counter()
      jax.block_until_ready(fns[n](*args))
      times[n].append(time.perf_counter() - t0)
  base = float(np.median(times["sum"])) if "sum" in times else float("nan")
  return {n: {"median_s": float(np.median(t)), "relative": float(np.median(t)) / base}
          for n, t in times.items()}
