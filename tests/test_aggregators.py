"""mtl.aggregators against TorchJD 0.18 / LibMTL (tests/fixtures/make_aggregator_fixtures.py)."""
import functools
import itertools
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtl import aggregators as agg
from mtl.aggregators import solvers

FIXTURES = np.load(os.path.join(os.path.dirname(__file__), "fixtures", "aggregators.npz"))
META = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "aggregators.json")))
CASES = sorted(k[:-2] for k in FIXTURES.files if k.endswith("/J"))
EXACT = ("sum", "mean", "upgrad", "mgda", "imtl_g", "aligned_mtl")
# Exact methods in float64: only rounding (cond(G) <= 3e4 here) separates them from TorchJD.
TOL_EXACT = 1e-9
# CAGrad and Nash-MTL references come from cvxpy solvers at their default tolerances
# (Clarabel; ECOS in 20 sequential solves), which is where their own error lies (see json).
TOL_SOLVER_REF = 2e-4


# Degenerate cases (identical / opposite / zero rows) where Nash-MTL has no solution and CAGrad's
# weights are 0 are checked against TorchJD only.
GENERIC = [c for c in CASES if c.split("_")[0] in ("random", "conflict", "rankdef")]
# G alpha = 1 / alpha has no positive solution with a zero row, opposite rows or J = 0.
NASH_SOLVABLE = GENERIC + ["same_t3"]


def rel(a, b, jac=None, floor=1e-6):
  """Relative error; a ~zero reference (degenerate cases) is measured against floor |J|_F."""
  floor = floor * np.linalg.norm(jac) if jac is not None else 0.0
  err = np.linalg.norm(np.asarray(a, np.float64) - b)
  return float(err / max(np.linalg.norm(b), floor, 1e-300))


@functools.cache
def jitted(name, weighting=False, **kwargs):
  """One jitted function per name (compiled once per shape and dtype for the whole module)."""
  if name == "pcgrad":
    f = agg.get_weighting("pcgrad") if weighting else agg.get("pcgrad")
    return jax.jit(lambda j, o: f(j, order=o))
  return jax.jit((agg.get_weighting if weighting else agg.get)(name, **kwargs))


def run(name, jac, case, **kwargs):
  """The aggregator under jit; pcgrad / gradvac replay TorchJD's orders (gradvac carries state)."""
  if name == "pcgrad":
    return jitted("pcgrad")(jac, FIXTURES[f"{case}/pcgrad_order"])
  if name.startswith("gradvac"):
    f = jitted("gradvac")
    state = agg.init("gradvac", jac.shape[0], jac.dtype)
    out, state = f(jac, state, order=FIXTURES[f"{case}/gradvac_order0"])
    if name == "gradvac1":
      out, state = f(0.5 * jac, state, order=FIXTURES[f"{case}/gradvac_order1"])
    return out, state
  return jitted(name, **kwargs)(jac)

@pytest.mark.parametrize("scale_mode, scale", [("min", 1.0), ("median", 4.0), ("rmse", 30 / 4)])
def test_aligned_mtl_scales_by_the_eigenvalue_its_scale_mode_names(scale_mode, scale):
  # orthogonal gradients of norms 4, 3, 2, 1: G's eigenvalues are their squares, each task's
  # own, so w_i = sqrt(scale / lambda_i) / T (Senushkin et al. 2023); 'median' is torch.median's
  # lower middle (4 of 1, 4, 9, 16), 'rmse' the mean eigenvalue; only 'min' had fixtures
  lam = np.array([16.0, 9.0, 4.0, 1.0])
  with jax.enable_x64(True):
    w = agg.get_weighting("aligned_mtl", scale_mode=scale_mode)(jnp.diag(jnp.asarray(lam)))
  np.testing.assert_allclose(w, np.sqrt(scale / lam) / 4, rtol=1e-12)  # float64 rounding



@pytest.mark.parametrize("case", CASES)
def test_matches_torchjd_float64(case):
  with jax.enable_x64(True):
    jac = jnp.asarray(FIXTURES[f"{case}/J"], jnp.float64)
    for name in EXACT + ("pcgrad",):
      assert rel(run(name, jac, case), FIXTURES[f"{case}/{name}"], jac) < TOL_EXACT, name
    for call in (0, 1):  # the second call depends on the EMA state the first one left
      out, state = run(f"gradvac{call}", jac, case)
      if case in GENERIC:
        assert rel(out, FIXTURES[f"{case}/gradvac{call}"], jac) < TOL_EXACT
      else:  # identical / opposite rows: GradVac's sqrt(1 - phi^2) at phi = +-1 turns a rounding
        # of phi (1e-16, depending on the dots' summation order) into up to sqrt(1e-16) of |J|
        assert rel(out, FIXTURES[f"{case}/gradvac{call}"], jac, floor=1.0) < 1e-8
      np.testing.assert_allclose(state, FIXTURES[f"{case}/gradvac_state{call}"], atol=1e-12)
    cagrad = run("cagrad", jac, case, c=0.5)
    assert rel(cagrad, FIXTURES[f"{case}/cagrad"], jac) < TOL_SOLVER_REF
    # Against the same problem solved by Clarabel at 1e-13 gaps: agreement to its remaining error.
    assert rel(cagrad, FIXTURES[f"{case}/cagrad_tight"], jac) < 1e-6
    nash = run("nash_mtl", jac, case)
    if case in NASH_SOLVABLE:
      assert rel(nash, FIXTURES[f"{case}/nash_mtl"], jac) < TOL_SOLVER_REF
    else:  # no bargaining solution: TorchJD's answer depends on where ECOS stops; ours is finite
      assert np.all(np.isfinite(np.asarray(nash)))


@pytest.mark.parametrize("case", ["conflict_t5", "rankdef_t5", "zeros_t5"])
def test_float32_within_conditioning(case):
  jac64 = FIXTURES[f"{case}/J"]
  sv = np.linalg.svd(jac64 @ jac64.T, compute_uv=False)
  cond = sv[0] / sv[sv > sv[0] * 1e-12][-1] if sv[0] > 0 else 1.0
  # float32 rounding of G, amplified by its condition number on its range, bounds the error.
  tol = max(1e-5, np.finfo(np.float32).eps * cond)
  jac = jnp.asarray(jac64, jnp.float32)
  for name in EXACT + ("pcgrad", "gradvac0", "cagrad", "nash_mtl"):
    out = run(name, jac, case, **({"c": 0.5} if name == "cagrad" else {}))
    out = out[0] if name.startswith("gradvac") else out
    assert out.dtype == jnp.float32
    if case == "zeros_t5":  # no gradient: every method must return exactly 0 (TorchJD does)
      assert not np.any(np.asarray(out)), name
      continue
    ref_tol = TOL_SOLVER_REF if name in ("cagrad", "nash_mtl") else 0.0
    assert rel(out, FIXTURES[f"{case}/{name}"]) < tol + ref_tol, name


def _nonneg_qp_by_enumeration(a, q):
  """argmin 1/2 z'Az + q'z over z >= 0 in float64: the free set whose solve meets the KKT
  conditions (A positive definite: exactly one does)."""
  t = len(q)
  for size in range(t + 1):
    for free in map(list, itertools.combinations(range(t), size)):
      z = np.zeros(t)
      if free:
        z[free] = np.linalg.solve(a[np.ix_(free, free)], -q[free])
      grad = a @ z + q
      fixed = [i for i in range(t) if i not in free]
      if np.all(z[free] >= 0) and np.all(grad[fixed] >= -1e-12 * (1 + np.abs(q).max())):
        return z
  raise AssertionError("no free set meets the KKT conditions")


def test_float32_nonneg_qp_is_exact_up_to_the_conditioning():
  """UPGrad's projections (Senushkin et al. 2023 via TorchJD): the QP of G/tr(G) + 1e-4 I with
  tasks' norms spread over e^3. In float32 the active-set loop stops only where the KKT slack is
  below a few roundings, so z matches the float64 optimum of the same float32 problem to
  eps * cond(A) (a factor of 8 seen here); the slack it accepted before (64 T eps) left z
  up to 0.08 off, 290 eps * cond."""
  rng = np.random.default_rng(0)
  eps = np.finfo(np.float32).eps
  solve = jax.jit(solvers.solve_nonneg_qp)
  for _ in range(30):
    jac = rng.normal(size=(6, 200)) * np.exp(rng.uniform(-3, 0, size=(6, 1)))
    g = jac @ jac.T
    a32 = np.asarray(g / np.trace(g) + 1e-4 * np.eye(6), np.float32)
    a = a32.astype(np.float64)
    for i in range(6):
      q32 = a32[:, i] / 6  # the projection of the mean weighting's i-th unit vector
      z = np.asarray(solve(jnp.asarray(a32), jnp.asarray(q32)), np.float64)
      exact = _nonneg_qp_by_enumeration(a, q32.astype(np.float64))
      bound = 16 * eps * np.linalg.cond(a) * max(1.0, np.abs(exact).max())
      assert np.abs(z - exact).max() < bound


def test_cagrad_is_optimal():
  """A solver-free certificate: the Frank-Wolfe gap bounds F(w) - min F over the simplex."""
  with jax.enable_x64(True):
    for case in GENERIC:
      jac = FIXTURES[f"{case}/J"]
      g = jac @ jac.T
      t = g.shape[0]
      gn = g / np.trace(g)
      b = gn.mean(1)
      s = 0.5 * np.sqrt(b.mean())
      weights = np.asarray(jitted("cagrad", weighting=True, c=0.5)(jnp.asarray(g)))
      w = weights - 1 / t  # weights = 1/T + k w_opt with w_opt on the simplex
      w = w / w.sum()
      grad = b + s * gn @ w / np.sqrt(w @ gn @ w)
      assert grad @ w - grad.min() < 1e-10, case


def test_nash_mtl_solves_bargaining_condition():
  """Unclipped Nash-MTL alpha meets G alpha = 1 / alpha (bargaining; Navon et al. 2022)."""
  with jax.enable_x64(True):
    for case in GENERIC:
      jac = FIXTURES[f"{case}/J"]
      g = jac @ jac.T
      alpha = np.asarray(jitted("nash_mtl", weighting=True, max_norm=0.0)(jnp.asarray(g)))
      assert np.all(alpha > 0)
      np.testing.assert_allclose(alpha * (g @ alpha), 1.0, atol=1e-8)
      # TorchJD's alpha is off this condition by its recorded residual; they agree within it.
      tol = max(META["cases"][case]["nash_residual"], 1e-9)
      assert rel(alpha, FIXTURES[f"{case}/nash_mtl_alpha"]) < tol


def test_weights_from_summed_gramians_match_matrix_form():
  """A trainer that sums per-leaf Gramians and applies the weights gets the aggregator's update."""
  with jax.enable_x64(True):
    jac = jnp.asarray(FIXTURES["conflict_t3/J"])
    leaves = (jac[:, :7], jac[:, 7:19], jac[:, 19:])
    g = sum(agg.gramian(x) for x in leaves)
    for name in ("upgrad", "mgda", "imtl_g", "aligned_mtl", "cagrad", "nash_mtl", "pcgrad"):
      kwargs = {"c": 0.5} if name == "cagrad" else {}
      order = FIXTURES["conflict_t3/pcgrad_order"]
      w = jitted(name, weighting=True, **kwargs)(*((g, order) if name == "pcgrad" else (g,)))
      update = jnp.concatenate([w @ x for x in leaves])
      np.testing.assert_allclose(update, run(name, jac, "conflict_t3", **kwargs),
                                 rtol=1e-10, atol=1e-10 * float(jnp.abs(jac).max()))


def test_upgrad_update_does_not_conflict():
  """UPGrad's update does not conflict with any task gradient (Quinton & Rey 2024)."""
  with jax.enable_x64(True):
    for case in ("random_t3", "conflict_t3", "rankdef_t3"):  # T=3: the weighting is compiled once
      jac = jnp.asarray(FIXTURES[f"{case}/J"])
      g = agg.gramian(jac)
      w = jitted("upgrad", weighting=True)(g)
      # KKT of each projection gives (G / tr G + 1e-4 I) v_i >= 0, so (G w)_k >= -1e-4 tr(G) w_k.
      slack = 1e-4 * float(jnp.trace(g)) * np.asarray(w) * (1 + 1e-6) + 1e-9
      assert np.all(np.asarray(jac @ (w @ jac)) >= -slack), case


def test_pcgrad_key_draws_one_of_the_orders():
  jac = jnp.asarray(FIXTURES["conflict_t3/J"], jnp.float32)
  perms = list(itertools.permutations(range(3)))
  pcgrad = agg.get_weighting("pcgrad")
  g = agg.gramian(jac)
  orders = jnp.asarray(list(itertools.product(perms, repeat=3)))  # every order of every task
  every = jax.vmap(lambda o: pcgrad(g, order=o))(orders)
  seen = set()
  f = jax.jit(lambda g, k: pcgrad(g, key=k))
  for k in range(8):
    w = f(g, jax.random.key(k))
    dist = jnp.abs(every - w).max(axis=1)
    assert float(dist.min()) < 1e-6
    seen.add(int(jnp.argmin(dist)))
  # Different keys give different orders (PCGrad's weights differ between some orders here).
  assert len({tuple(np.round(np.asarray(every[i]), 4)) for i in seen}) > 1


def test_per_leaf_applies_per_leaf():
  jac = jnp.asarray(FIXTURES["conflict_t3/J"], jnp.float32)
  tree = {"a": jac[:, :10].reshape(3, 2, 5), "b": jac[:, 10:]}
  out = jax.jit(agg.per_leaf(agg.get("mgda")))(tree)
  assert out["a"].shape == (2, 5) and out["b"].shape == (20,)
  for leaf, flat in (("a", jac[:, :10]), ("b", jac[:, 10:])):  # MGDA's weights differ per leaf here
    w = agg.get_weighting("mgda")(agg.gramian(flat))
    np.testing.assert_allclose(out[leaf].reshape(-1), w @ flat, rtol=1e-5, atol=1e-6)


def test_bad_names_raise():
  with pytest.raises(ValueError, match="upgrad"):
    agg.get("upgrade")
  with pytest.raises(ValueError, match="famo"):
    agg.get_loss_weighting("famo2", 3)
  with pytest.raises(ValueError, match="c=-1"):
    agg.get("cagrad", c=-1)


def test_bad_affinity_settings_are_refused_by_the_config_check():
  import ml_collections
  def cfg(**kw):
    return ml_collections.ConfigDict(dict(dict(aggregator="sum", loss_weighting="",
                                               affinity_every=0, affinity_lr=0.0), **kw))
  agg.check_config(cfg(affinity_every=5, affinity_lr=1e-3), 3)
  with pytest.raises(ValueError, match="affinity_every=-1"):
    agg.check_config(cfg(affinity_every=-1), 3)
  with pytest.raises(ValueError, match="affinity_lr=-0.01"):  # was used as the automatic step
    agg.check_config(cfg(affinity_every=5, affinity_lr=-0.01), 3)
  with pytest.raises(ValueError, match="schedule='one'"):  # measured nothing, said 'every 5'
    agg.check_config(cfg(affinity_every=5), 3, schedule="one")
  agg.check_config(cfg(affinity_every=5), 1, schedule="one")  # one task: nothing to measure


def test_invalid_method_arguments_are_refused_by_the_config_check():
  import ml_collections
  def cfg(**kw):
    return ml_collections.ConfigDict(dict(dict(aggregator="sum", loss_weighting=""), **kw))
  agg.check_config(cfg(aggregator="upgrad", aggregator_args=dict(pref_vector=(1.0, 2.0))), 2)
  for name in ("upgrad", "aligned_mtl"):  # a traceback in the first step, after files were written
    with pytest.raises(ValueError, match="pref_vector"):
      agg.check_config(cfg(aggregator=name, aggregator_args=dict(pref_vector=(1.0, 2.0, 3.0))), 2)
  with pytest.raises(ValueError, match="temperature=0"):  # NaN weights from the third epoch
    agg.check_config(cfg(loss_weighting="dwa", loss_weighting_args=dict(temperature=0.0)), 2)
  with pytest.raises(ValueError, match="lr=-0.1"):  # ascent on FAMO's objective
    agg.check_config(cfg(loss_weighting="famo", loss_weighting_args=dict(lr=-0.1)), 2)
  with pytest.raises(ValueError, match="max_norm=-1"):  # clipping off, as silently as 0
    agg.check_config(cfg(aggregator="nash_mtl", aggregator_args=dict(max_norm=-1.0)), 2)


def test_an_aggregator_with_a_loss_weighting_is_refused_by_the_config_check():
  import ml_collections
  def cfg(aggregator, loss_weighting):
    return ml_collections.ConfigDict(dict(aggregator=aggregator, loss_weighting=loss_weighting))
  agg.check_config(cfg("pcgrad", ""), 3)
  agg.check_config(cfg("sum", "dwa"), 3)
  for name in ("pcgrad", "mean", "imtl_g"):  # IMTL-G would undo DWA's weights on the body
    with pytest.raises(ValueError, match=re.escape(f"mtl.aggregator={name!r} with "
                                                   "mtl.loss_weighting='dwa': ")):
      agg.check_config(cfg(name, "dwa"), 3)


def test_a_non_bool_per_leaf_is_refused_by_the_config_check():
  import ml_collections
  def cfg(per_leaf):
    return ml_collections.ConfigDict(dict(aggregator="upgrad", loss_weighting="",
                                          aggregator_args=dict(per_leaf=per_leaf)))
  for ok in (True, False):
    agg.check_config(cfg(ok), 2)
  for bad in ("no", 1, 0.5, None):  # each was read as its truth value
    with pytest.raises(ValueError, match=re.escape(f"mtl.aggregator_args.per_leaf={bad!r}; "
                                                   "valid: True")):
      agg.check_config(cfg(bad), 2)


# ------------------------------------------------------------------------------------------
# Loss weightings.


def test_uncertainty_loss_and_gradients_match_libmtl():
  with jax.enable_x64(True):
    lw = agg.get_loss_weighting("uncertainty", 3)
    params, state = lw.init()
    np.testing.assert_allclose(params["log_var"], -0.5)  # LibMTL's initial value
    losses = jnp.asarray(FIXTURES["uw/losses"])
    params = {"log_var": jnp.asarray(FIXTURES["uw/log_var"])}
    total = lambda p, l: lw.combine(p, state, l)[0]  # noqa: E731
    np.testing.assert_allclose(total(params, losses), FIXTURES["uw/total"], rtol=1e-12)
    gp, gl = jax.grad(total, argnums=(0, 1))(params, losses)
    np.testing.assert_allclose(gl, FIXTURES["uw/grad_losses"], rtol=1e-12)
    np.testing.assert_allclose(gp["log_var"], FIXTURES["uw/grad_log_var"], rtol=1e-12)


def test_dwa_weights_on_a_known_history():
  lw = agg.get_loss_weighting("dwa", 3, steps_per_epoch=2)
  _, state = lw.init()
  update, combine = jax.jit(lw.update), jax.jit(lw.combine)
  epochs = np.array([[[1.0, 2.0, 4.0], [3.0, 2.0, 2.0]],  # epoch means 2, 2, 3
                     [[1.0, 1.0, 3.0], [1.0, 3.0, 3.0]],  # epoch means 1, 2, 3
                     [[5.0, 5.0, 5.0], [5.0, 5.0, 5.0]]])
  for e, batches in enumerate(epochs):
    for losses in batches:
      _, w = combine({}, state, jnp.asarray(losses, jnp.float32))
      if e < 2:  # fewer than two finished epochs: equal weights
        np.testing.assert_allclose(w, 1.0)
      else:  # ratios L_1 / L_0 = (0.5, 1, 1), temperature 2
        r = np.array([0.5, 1.0, 1.0]) / 2.0
        np.testing.assert_allclose(w, 3 * np.exp(r) / np.exp(r).sum(), rtol=1e-6)
      state = update(state, jnp.asarray(losses, jnp.float32))
  np.testing.assert_allclose(state["history"], [[1, 2, 3], [5, 5, 5]])


def test_rlw_weights_distribution():
  lw = agg.get_loss_weighting("rlw", 3)
  keys = jax.random.split(jax.random.key(0), 4000)
  w = jax.vmap(lambda k: lw.combine({}, {}, jnp.ones(3), key=k)[1])(keys)
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)  # LibMTL / Lin et al. 2022: a softmax
  # By symmetry each mean weight is 1/3; sampling std of a mean is < 0.004 here.
  np.testing.assert_allclose(w.mean(0), 1 / 3, atol=0.02)
  # log(w_0 / w_1) = n_0 - n_1 ~ N(0, 2): its sample variance has std 0.045 at n=4000.
  assert abs(float(jnp.var(jnp.log(w[:, 0] / w[:, 1]))) - 2.0) < 0.2
  with pytest.raises(ValueError, match="key"):
    lw.combine({}, {}, jnp.ones(3))


def test_famo_matches_libmtl_steps():
  with jax.enable_x64(True):
    lw = agg.get_loss_weighting("famo", 3)
    _, state = lw.init()
    state = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, state)
    seq = FIXTURES["famo/losses"]
    for k in range(len(seq) - 1):
      losses = jnp.asarray(seq[k])
      total, w = lw.combine({}, state, losses)
      np.testing.assert_allclose(w, FIXTURES["famo/weights"][k], rtol=1e-10)
      # The weighted sum has FAMO's gradient: d/dL_i sum_j z_j log(L_j) / c = z_i / (c L_i).
      grad = jax.grad(lambda l: lw.combine({}, state, l)[0])(losses)  # noqa: B023
      np.testing.assert_allclose(grad, w, rtol=1e-12)
      state = jax.jit(lw.update)(state, losses, jnp.asarray(seq[k + 1]))
      np.testing.assert_allclose(state["logits"], FIXTURES["famo/logits"][k], rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Inside the training step (config.mtl): the update gradient the step hands to the optimizer.

import optax  # noqa: E402

from experiments import tiny  # noqa: E402
from mtl import degradations, losses, run_state, sharding  # noqa: E402
from mtl import step as step_lib  # noqa: E402
from mtl import tasks as tasks_lib  # noqa: E402
from photo_batch import photo_batch  # noqa: E402

STEP_TASKS = ("denoise_30", "sr_x2", "derain")


def _recorder():
  """An optax transformation whose state is the last gradient it was given (updates are 0)."""
  return optax.GradientTransformation(
      lambda p: jax.tree.map(jnp.zeros_like, p),
      lambda u, s, p=None: (jax.tree.map(jnp.zeros_like, u), u))


def _step_config(aggregator="sum", devices=1, **args):
  config = tiny.get_config()
  config.tasks = STEP_TASKS
  config.data.batch_size = 8 if devices > 1 else 2
  config.mesh.data = devices
  config.mtl.aggregator = aggregator
  for k, v in args.items():
    config.mtl.aggregator_args[k] = v
  return config




def _step_grads(config):
  """(update gradient the step computed, params, batch, run, new state) for one jitted step."""
  run = run_state.build(config)
  rec = _recorder()
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    state = state.replace(opt_state=rec.init(state.params))
    params = jax.device_get(state.params)
    batch = photo_batch(config, run)
    step = jax.jit(step_lib.make_step(run.model, config, rec, run.model.task_names, run.plan))
    new_state, _ = step(state, sharding.to_global(batch, run.mesh))
    return jax.device_get(new_state.opt_state), params, batch, run, jax.device_get(new_state)


def _task_grads(run, config, params, batch):
  """Each task's own loss gradient w.r.t. the body: plain jax.grad, one task at a time."""
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  out = []
  for spec in run.model.specs:  # degradations keyed by the task's name, as the step does
    x, y = degradations.degrade(spec, jax.random.fold_in(key, tasks_lib.task_id(spec.name)),
                                batch[spec.name], config.degrade)
    # jitted: eager op-by-op dispatch of the model took ~3x as long on 2 cores
    out.append(jax.jit(jax.grad(lambda b, x, y, name=spec.name: losses.l1(
        run.model.apply(dict(params, body=b), name, x), y)))(params["body"], x, y))
  return [[np.asarray(l, np.float64) for l in jax.tree_util.tree_leaves(g)] for g in out]


def _body_close(got, want, tol):
  got = [np.asarray(l, np.float64) for l in jax.tree_util.tree_leaves(got)]
  scale = max(np.abs(w).max() for w in want)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g / scale, w / scale, atol=tol)


# float32 reductions in a different order (another program, 1 vs 8 devices) move a body gradient
# entry by ~1e-5 of the largest; weights from a well-conditioned G move as little.
STEP_TOL = 2e-4


@pytest.fixture(autouse=True)
def _float32_matmuls():
  """The step tests compare two programs to float32 summation-order noise (above); at a GPU's
  default matmul precision (TF32: ~1e-3 per product) they would measure its rounding. On CPU
  'highest' is the default."""
  with jax.default_matmul_precision("highest"):
    yield


def test_step_sum_is_the_plain_sum_and_mean_its_average():
  grads_sum, params, batch, run, _ = _step_grads(_step_config("sum"))
  per_task = _task_grads(run, _step_config("sum"), params, batch)
  _body_close(grads_sum["body"], [sum(ls) for ls in zip(*per_task)], STEP_TOL)
  grads_mean, *_ = _step_grads(_step_config("mean"))
  _body_close(grads_mean["body"], [sum(ls) / 3 for ls in zip(*per_task)], STEP_TOL)
  # Task-specific parts keep their own gradient. The two steps sum them in another order ('mean'
  # runs the body per half-batch), hence STEP_TOL; an aggregator's weight on them would be O(1).
  for group in ("heads", "tails", "queries"):
    _body_close(grads_mean[group], [np.asarray(l, np.float64) for l in
                                    jax.tree_util.tree_leaves(grads_sum[group])], STEP_TOL)


@pytest.mark.parametrize("name,args", [("upgrad", {}), ("pcgrad", {"per_leaf": True})])
def test_step_aggregator_equals_weighting_of_task_gradients(name, args):
  # upgrad: the same batch of 8 on 1 and 8 devices; pcgrad on one device (keeps the file fast)
  configs = {d: _step_config(name, d, **args) for d in ((1, 8) if name == "upgrad" else (1,))}
  if name == "upgrad":
    configs[1].data.batch_size = 8
  got = {d: _step_grads(c) for d, c in configs.items()}
  grads1, params, batch, run, _ = got[1]
  per_task = _task_grads(run, configs[1], params, batch)
  if 8 in got:
    _body_close(got[8][0]["body"], [np.asarray(l, np.float64) for l in
                                    jax.tree_util.tree_leaves(grads1["body"])], STEP_TOL)
  if name == "upgrad":  # whole body: one Gramian (sum over leaves), one weight vector
    g = sum(np.einsum("ti,si->ts", *(np.stack([t[l].ravel() for t in per_task]),) * 2)
            for l in range(len(per_task[0])))
    w = np.asarray(agg.get_weighting("upgrad")(jnp.asarray(g, jnp.float32)), np.float64)
    assert np.all(w > 0)
    _body_close(grads1["body"], [sum(wt * t[l] for wt, t in zip(w, per_task))
                                 for l in range(len(per_task[0]))], STEP_TOL)
  else:  # per leaf, each leaf's PCGrad from the step's key; a conflicting pair is projected
    key = jax.random.split(jax.random.fold_in(jax.random.fold_in(
        jax.random.key(0), 0), step_lib._MTL_STREAM))[1]
    keys = jax.random.split(key, len(per_task[0]))
    pcgrad = jax.jit(agg.get_weighting("pcgrad"))  # one compile for every leaf's (3, 3) G
    want, moved = [], 0
    for l in range(len(per_task[0])):
      j = np.stack([t[l].ravel() for t in per_task])
      w = np.asarray(pcgrad(jnp.asarray(j @ j.T, jnp.float32), key=keys[l]), np.float64)
      want.append((w @ j).reshape(per_task[0][l].shape))
      moved += not np.allclose(w, 1.0)
    assert moved > 0  # some leaf has a conflicting pair, so PCGrad differs from the sum here
    _body_close(grads1["body"], want, STEP_TOL)


def test_step_gradvac_state_is_carried_and_checkpointed(tmp_path):
  config = _step_config("gradvac")
  _, _, _, run, new_state = _step_grads(config)
  phi = np.asarray(new_state.mtl_state["aggregator"])
  assert phi.shape == (3, 3) and np.abs(phi).max() > 0  # the EMA moved off its zeros
  from mtl import checkpoints
  mngr = checkpoints.manager(str(tmp_path), async_save=False)
  with jax.set_mesh(run.mesh):
    adam = run.init_state().opt_state  # _step_grads recorded gradients in opt_state; save Adam's
    checkpoints.save(mngr, 1, new_state.replace(opt_state=adam), force=True)
    back = checkpoints.restore(mngr, run.abstract_state)
  assert "mtl_state" in os.listdir(tmp_path / "checkpoints" / "1")
  np.testing.assert_array_equal(np.asarray(back.mtl_state["aggregator"]), phi)
  # a plain run saves no mtl_state item, and restores as before
  plain = run_state.build(_step_config("sum"))
  mngr2 = checkpoints.manager(str(tmp_path / "plain"), async_save=False)
  with jax.set_mesh(plain.mesh):
    s = plain.init_state()
    assert s.mtl_state is None
    checkpoints.save(mngr2, 1, s, force=True)
    saved = set(os.listdir(tmp_path / "plain" / "checkpoints" / "1"))
    assert {"opt_state", "params"} <= saved and "mtl_state" not in saved
    assert checkpoints.restore(mngr2, plain.abstract_state).mtl_state is None


def test_step_uncertainty_weighting_trains_log_vars():
  config = _step_config("sum")
  config.mtl.loss_weighting = "uncertainty"
  grads, params, batch, run, new_state = _step_grads(config)
  s = np.asarray(params["loss_weighting"]["log_var"], np.float64)
  # d/ds_i [L_i / (2 e^s_i) + s_i / 2] = 1/2 - L_i / (2 e^s_i)
  key = jax.random.fold_in(jax.random.key(config.seed), 0)
  per = []
  for spec in run.model.specs:  # degradations keyed by the task's name, as the step does
    x, y = degradations.degrade(spec, jax.random.fold_in(key, tasks_lib.task_id(spec.name)),
                                batch[spec.name], config.degrade)
    per.append(float(losses.l1(run.model.apply(params, spec.name, x), y)))
  want = 0.5 - np.array(per) / (2 * np.exp(s))
  # the losses again, in other programs: float32 summation order (~1e-6 of a loss)
  np.testing.assert_allclose(np.asarray(grads["loss_weighting"]["log_var"]), want, rtol=1e-4)
  # and the body gradient is the per-task gradients weighted by 1 / (2 e^s)
  per_task = _task_grads(run, config, params, batch)
  w = 1 / (2 * np.exp(s))
  _body_close(grads["body"], [sum(wt * t[l] for wt, t in zip(w, per_task))
                              for l in range(len(per_task[0]))], STEP_TOL)


def test_small_gradients_keep_upgrad_and_cagrad_scale_free():
  # A conflicting J with ||J||_F^2 = 1e-6 (per-layer Gramians reach 1e-4 in a real study; with
  # TorchJD's absolute 1e-4 both would be the mean there): the same weights as at scale 1.
  j = np.array([[1.0, 0.2, -0.3], [-0.8, 0.5, 0.1], [0.2, -0.9, 0.4]])
  g = j @ j.T / np.trace(j @ j.T)
  with jax.enable_x64(True):
    for name in ("upgrad", "cagrad"):
      at_one = np.asarray(jitted(name, weighting=True)(jnp.asarray(g)))
      small = np.asarray(jitted(name, weighting=True)(jnp.asarray(1e-6 * g)))
      assert not np.allclose(at_one, 1 / 3, atol=1e-3), (name, at_one)
      np.testing.assert_allclose(small, at_one, rtol=1e-9, err_msg=name)
    zero = np.asarray(jitted("upgrad", weighting=True)(jnp.zeros((3, 3))))
    np.testing.assert_allclose(zero, 1 / 3)  # a zero J: the mean


def test_gradvac_with_one_task_is_the_task_itself():
  weights, state = agg.get_weighting("gradvac")(jnp.eye(1), agg.init("gradvac", 1, jnp.float32),
                                                key=jax.random.key(0))
  assert np.asarray(weights).tolist() == [1.0] and state.shape == (1, 1)
