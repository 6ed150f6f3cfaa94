"""Small linear algebra on T x T Gramians for the aggregators: normalisation, preference
vectors, and the quadratic programs UPGrad, CAGrad and MGDA solve, in bounded iterations."""
import jax
import jax.numpy as jnp


# Small linear-algebra helpers (all on T x T matrices).


def gramian(jac):
  """G = J J^T of the (T, D) per-task gradients; (T, T), accumulated in float32 or wider."""
  acc = jnp.promote_types(jac.dtype, jnp.float32)
  return jnp.einsum("td,sd->ts", jac, jac, preferred_element_type=acc)


def _normalize(g, eps=0.0):
  """G / tr(G) (tr: ||J||_F^2), as TorchJD's `normalize`; a zero Gramian where tr <= eps or
  is too small to divide by. TorchJD's eps is 1e-4, absolute: mtl's per-layer Gramians reach
  9.5e-5 (the remedies study), where UPGrad and CAGrad would quietly become the mean."""
  tr = jnp.trace(g)
  zero = tr <= jnp.maximum(eps, jnp.finfo(g.dtype).tiny)
  return jnp.where(zero, jnp.zeros_like(g), g / jnp.where(zero, 1.0, tr))


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


def _toward_free_solve(x, s, free):
  """One active-set move of both solvers below, from the iterate x toward the free-set solve s:
  all the way when s keeps every free variable > 0, else to the first blocking bound (the ratio
  test), freezing the variables that hit 0. Returns (new x, new free set, s was feasible)."""
  feasible = jnp.all(jnp.where(free, s > 0, True))
  blocking = free & (s <= 0)
  den = x - s  # 0 only for a variable at 0 whose solve is 0: it blocks at once
  ratio = jnp.where(blocking, jnp.where(den > 0, x / jnp.where(den > 0, den, 1.0), 0.0), jnp.inf)
  step = jnp.minimum(jnp.min(ratio), 1.0)
  x_new = jnp.where(feasible, s, x + step * (s - x))
  free_new = jnp.where(feasible, free, free & (x_new > 0) & ~(blocking & (ratio <= step)))
  return jnp.where(free_new, x_new, 0.0), free_new, feasible


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
  tol = 2 * t * _eps(a.dtype) * scale  # KKT slack below rounding of A z + q counts as optimal

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
    z_new, free_new, feasible = _toward_free_solve(z, solve_free(free), free)
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
  tol = 2 * t * _eps(h.dtype) * scale
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
    w_new, free_new, feasible = _toward_free_solve(w, solve_free(free), free)
    w_new = w_new / jnp.sum(w_new)  # guards the simplex against rounding drift
    w_new = jnp.where(converged, w, w_new)
    free_new = jnp.where(converged, free, free_new)
    return w_new, free_new, ~feasible & ~converged, it + 1, converged

  k0 = jnp.argmin(0.5 * jnp.diag(h) + f)
  w0 = jax.nn.one_hot(k0, t, dtype=h.dtype)
  init = (w0, w0 > 0, jnp.array(False), jnp.array(0), jnp.array(False))
  return jax.lax.while_loop(cond, body, init)[0]
