"""config.model.body_calls: the steps' batched body calls (one vmapped body over the tasks, or
over the probe's 2T half-batches) and scanned ones (one body run K times by jax.lax.map) give the
losses, gradients and Gramians of one call each."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import small
from mtl import run_state, sharding
from mtl import step as step_lib
from mtl.models import ipt
from photo_batch import photo_batch

TASKS = ("denoise_30", "sr_x2", "derain")

# Both paths compute the same float32 products; only the order of float32 sums differs (a
# batched matmul blocks its reductions differently from the looped ones, and the plain step's
# body-weight gradient sums the tasks inside one matmul instead of adding T of them). A sum of n
# terms in another order moves by ~sqrt(n) eps (eps = 1.2e-7) times its cancellation factor:
# the losses (n ~ 1e5 pixels, no cancellation) by < 1e-5 relative; gradient leaves and
# Gramians (n ~ 1e4 products per element, cancellation 10-100) by < 1e-3 of their scale. A path
# that mixed up tasks or halves would move them by O(1).
LOSS_RTOL, GRAD_TOL = 1e-5, 1e-3


def _config():
  config = small.get_config()
  config.tasks = TASKS
  config.precision = "float32"
  config.model.patch_size = 24  # two encoder and two decoder layers on 64 tokens: a fast step
  config.data.batch_size = 4
  config.conflicts.batch_size = 0  # the probe on the training batch's halves, in the step
  config.mesh.data = 1
  return config


def _keep_gradient():
  """Zero updates whose state is the step's gradient, as the step computed it."""
  zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)
  return optax.GradientTransformation(zeros, lambda grads, state, params=None: (zeros(grads),
                                                                                grads))


def _run(config, body_calls, probe, scan_unroll=1, fsdp=1):
  config.model.body_calls, config.model.scan_unroll = body_calls, scan_unroll
  config.mesh.fsdp = fsdp
  run = run_state.build(config)
  assert run.model.cfg.body_mode() == body_calls
  keep = _keep_gradient()
  # A GPU runs float32 matmuls as TF32 by default (10-bit mantissa) and two programs may pick
  # different kernels; at 'highest' both paths compute float32 products on every backend.
  with jax.set_mesh(run.mesh), jax.default_matmul_precision("highest"):
    state = run.init_state()
    state = state.replace(opt_state=keep.init(state.params))
    step = jax.jit(step_lib.make_step(run.model, config, keep, run.model.task_names, run.plan,
                                      probe=probe))
    out = step(state, sharding.to_global(photo_batch(config, run), run.mesh))
  return jax.device_get(out)


@functools.cache
def _looped(probe):
  """The reference, computed once per module (each mode is compared with it)."""
  return _run(_config(), "looped", probe)


def _assert_trees_close(got, want):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want),
                          jax.tree_util.tree_leaves(got)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(a).max()
    assert scale > 0, jax.tree_util.keystr(path)  # every leaf gets a gradient
    np.testing.assert_allclose(b / scale, a / scale, atol=GRAD_TOL,
                               err_msg=jax.tree_util.keystr(path))


def _assert_same_step(got, looped, probe):
  """A step's losses, gradients (kept as its optimizer state) and, probing, Gramians are the
  looped reference's."""
  for name in TASKS:
    assert float(got[1][f"loss/{name}"]) == pytest.approx(float(looped[1][f"loss/{name}"]),
                                                          rel=LOSS_RTOL)
  _assert_trees_close(got[0].opt_state, looped[0].opt_state)
  if probe:
    grams, want = np.asarray(got[2], np.float64), np.asarray(looped[2], np.float64)
    assert grams.shape == want.shape == (len(ipt.shared_layer_names(
        looped[0].params["body"])), 2 * len(TASKS), 2 * len(TASKS))
    scale = np.abs(want).max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(grams / scale, want / scale, atol=GRAD_TOL)


@pytest.mark.parametrize("mode, scan_unroll", [("batched", 1), ("scanned", 1), ("batched", 2)],
                         ids=["batched", "scanned", "batched-unrolled"])
@pytest.mark.parametrize("probe", [False, True], ids=["plain", "probe"])
def test_batched_and_scanned_body_calls_give_the_looped_losses_gradients_and_gramians(
    probe, mode, scan_unroll):
  _assert_same_step(_run(_config(), mode, probe, scan_unroll), _looped(probe), probe)


@pytest.mark.cpu_only  # 4 devices: the fake CPU ones
@pytest.mark.parametrize("probe, mode", [(False, "looped"), (True, "batched")],
                         ids=["plain-looped", "probe-batched"])
def test_an_fsdp_mesh_gives_the_one_device_losses_gradients_and_gramians(probe, mode):
  # The body's large leaves split 4 ways (mesh.fsdp=4, the batch too) and gathered where a
  # layer uses them (sharding.gathered): only the order of float32 sums moves, as above.
  _assert_same_step(_run(_config(), mode, probe, fsdp=4), _looped(probe), probe)


def test_gramians_in_pieces_give_the_probe_s_gramians():
  # config.conflicts.gramian_chunk: every body leaf of the small model cut into pieces of at
  # most 64 entries (6 to 5184 of them); only the order of the Gramians' float32 sums moves.
  config = _config()
  config.conflicts.gramian_chunk = 64
  grams = np.asarray(_run(config, "batched", True)[2], np.float64)
  want = np.asarray(_looped(True)[2], np.float64)
  scale = np.abs(want).max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(grams / scale, want / scale, atol=GRAD_TOL)


@pytest.mark.parametrize("weighting", ["rlw", "uncertainty"])
def test_a_loss_weighting_leaves_the_gramians_those_of_the_tasks_own_losses(weighting):
  # The step differentiates w_t L_t; its Gramians are of the L_t's gradients (those the probe
  # batch measures), so they equal the unweighted step's whatever the weights (rlw: random each
  # step; uncertainty: exp(-s_t) of the log-variances). Weighted, they read w_i w_j G_ij.
  config = _config()
  config.mtl.loss_weighting = weighting
  weighted = _run(config, "looped", True)
  weights = [float(weighted[1][f"mtl/loss_weight/{name}"]) for name in TASKS]
  assert max(abs(w - 1) for w in weights) > 0.1, weights
  grams = np.asarray(weighted[2], np.float64)
  want = np.asarray(_looped(True)[2], np.float64)
  scale = np.abs(want).max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(grams / scale, want / scale, atol=GRAD_TOL)


def test_auto_body_calls_batch_on_accelerators_and_loop_on_cpus():
  cfg = ipt.ModelConfig(**ipt.SIZES["tiny"])
  assert [cfg.body_mode(b) for b in ("gpu", "tpu", "cpu")] == ["batched", "batched", "looped"]
  for mode in ("batched", "scanned", "looped"):
    assert dataclasses.replace(cfg, body_calls=mode).body_mode("gpu") == mode
  with pytest.raises(ValueError, match="model.body_calls='both'; valid: 'auto', 'batched'"):
    dataclasses.replace(cfg, body_calls="both").validate()
