"""Gramian weightings, (T, T) Gramian -> (T,) task weights, and the aggregators built on them
(`get(name)`: (T, D) per-task gradients -> (D,) update), with TorchJD 0.18's conventions."""
import jax
import jax.numpy as jnp

from mtl.aggregators.solvers import (_eps, _normalize, _pinv_psd, _pref, gramian, solve_nonneg_qp,
                                     solve_simplex_qp)


# Gramian weightings: (T, T) Gramian -> (T,) weights. Names and defaults follow TorchJD 0.18.


def sum_weighting():
  return lambda g: jnp.ones(g.shape[0], g.dtype)


def mean_weighting():
  return lambda g: jnp.full(g.shape[0], 1.0 / g.shape[0], g.dtype)


def upgrad_weighting(pref_vector=None, norm_eps=0.0, reg_eps=1e-4):
  """UPGrad (Quinton & Rey 2024): sum over tasks i of the dual-cone projection weights of J^T u_i.

  Projection of J^T u onto the dual cone of the rows of J has weights v = argmin v^T G v s.t.
  v >= u (their Prop. 1), solved on G / tr(G) + reg_eps I as TorchJD's quadprog projector does;
  here with `solve_nonneg_qp` on z = v - u (exact active set). A trace <= norm_eps counts as a
  zero Gramian (the mean weights); TorchJD's 1e-4 is absolute, so the default is 0 (scale-free).
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
  As TorchJD: the update is the paper's d = g0 + sqrt(phi) g_w / |g_w| (LibMTL's default rescale
  divides it by 1 + c^2, a constant factor), and where |g_w| < norm_eps on the normalised
  Gramian (about Pareto-stationary) the weights are zero.
  """
  if c < 0:
    raise ValueError(f"cagrad c={c}; valid: c >= 0")

  def weighting(g):
    t = g.shape[0]
    gn = _normalize(g)  # scale-free; norm_eps is the Pareto test on the normalised |g_w|
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
  if max_norm < 0:  # it would disable the clipping as silently as 0
    raise ValueError(f"nash_mtl max_norm={max_norm}; valid: >= 0 (0: no clipping)")

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
    if t == 1:  # no other task to align with
      return jnp.ones(1, g.dtype), state
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
