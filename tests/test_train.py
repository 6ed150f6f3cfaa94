"""The train step: probe Gramians equal independently taken per-half gradients; the probe's
update equals the plain step's; odd probe batches are refused; devices agree."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tiny
from mtl import conflicts, degradations, losses, run_config, run_state, sharding
from mtl import step as step_lib
from mtl import tasks as tasks_lib
from mtl.data import pipeline
from mtl.models import ipt
from photo_batch import photo_batch

TASKS = ("denoise_30", "sr_x2", "derain")


def _config(data=1, **overrides):
  config = tiny.get_config()
  config.tasks = TASKS
  config.data.batch_size = 8
  config.mesh.data = data
  config.optim.warmup_steps = 0
  config.conflicts.batch_size = 0  # probes on the training batch's halves
  for key, value in overrides.items():
    config[key] = value
  return config


@pytest.fixture(autouse=True)
def _float32_matmuls():
  """These tests hold two programs' float32 results to float32 summation-order noise; at a GPU's
  default matmul precision (TF32, a 10-bit mantissa: ~1e-3 per product) they would measure the
  backend's rounding, not the step. On CPU 'highest' is the default."""
  with jax.default_matmul_precision("highest"):
    yield


def _independent_task_grads(run, config, params, batch, step, halves=False):
  """Each task's gradient of its own loss alone, w.r.t. the body: plain jax.grad per task;
  with halves, per half (rows 0, 2, ... then 1, 3, ...), in the order [t0a, t0b, t1a, ...]."""
  key = jax.random.fold_in(jax.random.key(config.seed), step)
  grads = []
  for spec in run.model.specs:
    task_key = jax.random.fold_in(key, tasks_lib.task_id(spec.name))
    inputs, targets = degradations.degrade(spec, task_key,
                                           batch[spec.name], config.degrade)
    parts = [(inputs[h::2], targets[h::2]) for h in (0, 1)] if halves else [(inputs, targets)]
    # jitted: eager op-by-op dispatch of the model took ~3x as long on 2 cores
    task_grad = jax.jit(jax.grad(lambda body, x, y, name=spec.name: losses.l1(
        run.model.apply(dict(params, body=body), name, x), y)))
    grads += [task_grad(params["body"], x, y) for x, y in parts]
  return grads


def _leaf_gramians(grads):
  leaves = [jax.tree_util.tree_leaves(ipt.unstack_layers(g)) for g in grads]  # per layer
  flat = [[np.asarray(l, np.float64).ravel() for l in task] for task in leaves]
  return np.array([[[flat[i][l] @ flat[j][l] for j in range(len(grads))]
                    for i in range(len(grads))] for l in range(len(leaves[0]))])


@pytest.mark.parametrize("devices", [1, pytest.param(8, marks=pytest.mark.cpu_only)])
def test_probe_gramians_equal_independent_per_half_gradients(devices):
  config = _config(data=devices)
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    params = jax.device_get(state.params)
    batch = photo_batch(config, run)
    step = jax.jit(step_lib.make_step(run.model, config, run.optimizer, run.model.task_names,
                                   run.plan, probe=True))
    _, metrics, grams = step(state, sharding.to_global(batch, run.mesh))
  expected = _leaf_gramians(_independent_task_grads(run, config, params, batch, 0, halves=True))
  grams = np.asarray(grams, np.float64)
  assert grams.shape == expected.shape == (len(ipt.shared_layer_names(params["body"])), 6, 6)
  # Per leaf, float32 summation order alone moves a squared norm by ~2e-5 relative (the same
  # jax.grad compiled in two programs differs that much), so leaves are held to 1e-4 ...
  scale = np.abs(expected).max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(grams / scale, expected / scale, atol=1e-4)
  # ... and the whole body's cosines and norms, as the analyzer reports them, to 1e-5.
  body, body_expected = grams.sum(0), expected.sum(0)
  cos = body / np.sqrt(np.outer(np.diag(body), np.diag(body)))
  cos_expected = body_expected / np.sqrt(np.outer(np.diag(body_expected), np.diag(body_expected)))
  np.testing.assert_allclose(cos, cos_expected, atol=1e-5)
  np.testing.assert_allclose(np.sqrt(np.diag(body)), np.sqrt(np.diag(body_expected)), rtol=1e-5)
  # The task Gramian of the halves is the Gramian of whole-sub-batch task gradients (equal
  # halves: the mean of the halves' L1 means is the sub-batch's), as the un-split probe stored.
  if devices == 1:
    whole = _leaf_gramians(_independent_task_grads(run, config, params, batch, 0)).sum(0)
    task = conflicts.task_gramian(grams.sum(0))
    np.testing.assert_allclose(task / np.abs(whole).max(), whole / np.abs(whole).max(),
                               atol=1e-5)


def test_a_bfloat16_run_measures_its_probe_batch_in_float32():
  # the probe took the run's bfloat16 gradients, whose rounding the two halves partly share
  # (corrected cosines moved by up to 0.013 on this model)
  import dataclasses
  import functools
  config = _config(precision="bfloat16")
  run = run_state.build(config)
  f32 = ipt.IPT(dataclasses.replace(run.model.cfg, compute_dtype="float32"), run.model.specs)
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    batch = sharding.to_global(photo_batch(config, run), run.mesh)
    measured = [np.asarray(jax.jit(functools.partial(
        step_lib.probe_gramians, model=model, config=config, names=run.model.task_names))(
            state.params, batch, np.int32(0))) for model in (run.model, f32)]
  np.testing.assert_array_equal(*measured)  # the same float32 program


def test_a_probe_batch_takes_the_contrastive_term_per_half_so_the_halves_are_independent():
  """With a contrastive loss term, half a's body gradient must not depend on half b's images
  (the noise floor's premise): on a probe batch (which updates nothing) it does not; on the
  training batch the term's negatives span both halves, as the update's do."""
  config = _config(tasks=("sr_x2",))
  config.model.patch_size = 24
  config.data.batch_size = 4
  config.loss.contrastive_weight = 0.1
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    params = jax.device_get(run.init_state().params)
  specific = {k: v for k, v in params.items() if k != "body"}
  x = np.random.default_rng(0).uniform(0, 255, (4, 24, 24, 3)).astype(np.float32)
  y = np.random.default_rng(1).uniform(0, 255, (4, 48, 48, 3)).astype(np.float32)
  other = x.copy()
  other[1::2] = 255.0 - other[1::2]  # half b (rows 1, 3) changed, half a (rows 0, 2) kept

  for independent in (True, False):
    loss = lambda bodies, inputs: step_lib.half_task_losses(
        run.model, config.loss, ["sr_x2"], specific, bodies, {"sr_x2": inputs},
        {"sr_x2": jnp.asarray(y)}, independent_halves=independent).sum()
    grad = jax.jit(jax.grad(loss))
    same, changed = (np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(
        grad([params["body"]] * 2, jnp.asarray(inputs))[0])]) for inputs in (x, other))
    moved = np.abs(changed - same).max() / np.abs(same).max()
    # independent: half a's rows go through the same float32 program (0.0 here; 1e-5 leaves
    # room for a backend whose reductions are not bitwise repeatable); coupled: half b's tokens
    # are half a's negatives, which moved its gradient by 2e-2 of its largest entry
    assert (moved < 1e-5) if independent else (moved > 1e-3), (independent, moved)


def test_probe_batch_gramians_equal_the_reference_probe_on_the_same_batch():
  """conflicts.batch_size: the probe step's Gramians come from the probe batch (at the
  parameters before the update) and equal the reference probe's (the training batch's halves)
  on that same batch; the update is the plain step's on the training batch alone."""
  # SR tasks: their degradation (bicubic) draws no random numbers, so the probe batch's own
  # stream and the training stream degrade the batch alike; 24 px patches keep it quick.
  config = _config(tasks=("sr_x2", "sr_x3"))
  config.model.patch_size = 24
  config.data.batch_size, config.conflicts.batch_size = 4, 8
  run = run_state.build(config)
  assert run.plan.batch_size == 8 and not run.plan.splits
  reference_config = _config(tasks=("sr_x2", "sr_x3"))  # training batch 8: the reference probe
  reference_config.model.patch_size = 24
  reference = run_state.build(reference_config)
  names = run.model.task_names
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    train = photo_batch(config, run)
    probe = photo_batch(reference_config, reference, seed=1)
    batch = dict(train, **{pipeline.PROBE_PREFIX + k: v for k, v in probe.items()})
    plain, m_plain = jax.jit(step_lib.make_step(run.model, config, run.optimizer, names,
                                                run.plan))(state, sharding.to_global(train,
                                                                                     run.mesh))
    probed, m_probe, grams = jax.jit(step_lib.make_step(
        run.model, config, run.optimizer, names, run.plan, probe=True))(
            state, sharding.to_global(batch, run.mesh))
    _, _, want = jax.jit(step_lib.make_step(reference.model, reference_config,
                                            reference.optimizer, names, reference.plan,
                                            probe=True))(state, sharding.to_global(probe,
                                                                                   run.mesh))
  grams, want = np.asarray(grams, np.float64), np.asarray(want, np.float64)
  assert grams.shape == want.shape == (len(ipt.shared_layer_names(state.params["body"])), 4, 4)
  # Float32 summation order alone (another program) moves a leaf's Gramian by ~2e-5 of its
  # scale (see the test above): 1e-4.
  scale = np.abs(want).max(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(grams / scale, want / scale, atol=1e-4)
  # The update is the plain step's on the training batch: the probe's Gramians do not feed it,
  # so it equals the plain program's to float32 rounding of a parameter (1 ulp).
  assert float(m_probe["loss/total"]) == pytest.approx(float(m_plain["loss/total"]), rel=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(plain.params), jax.tree_util.tree_leaves(probed.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0,
                               atol=float(np.spacing(np.float32(np.abs(np.asarray(a)).max()))))


def test_probe_step_makes_the_same_update_as_the_plain_step():
  """Summed per-half body gradients (per-task loss = mean of its halves' losses) are the plain
  update's gradient (plain SGD shows it unamplified)."""
  import optax
  config = _config()
  run = run_state.build(config)
  sgd = optax.sgd(1.0)
  with jax.set_mesh(run.mesh):
    batch = sharding.to_global(photo_batch(config, run), run.mesh)
    start = run.init_state()
    start = start.replace(opt_state=sgd.init(start.params))
    names = run.model.task_names
    plain, m_plain = jax.jit(step_lib.make_step(run.model, config, sgd, names, run.plan))(start,
                                                                                          batch)
    probed, m_probe, _ = jax.jit(step_lib.make_step(run.model, config, sgd, names, run.plan,
                                                    probe=True))(
        start, batch)
  assert float(m_plain["loss/total"]) == pytest.approx(float(m_probe["loss/total"]), rel=1e-6)
  assert float(m_plain["grad_norm"]) == pytest.approx(float(m_probe["grad_norm"]), rel=1e-5)
  deltas = lambda s: jax.tree_util.tree_map(lambda a, b: np.asarray(a) - np.asarray(b),
                                            s.params["body"], start.params["body"])
  starts = jax.tree_util.tree_leaves(start.params["body"])
  for a, b, p in zip(jax.tree_util.tree_leaves(deltas(plain)),
                     jax.tree_util.tree_leaves(deltas(probed)), starts):
    # A delta is a difference of float32 parameters: it is known to one ulp of the parameter
    # (LayerNorm scales start at 1.0: 1.2e-7), on top of the summation-order noise of the
    # gradient (1e-4 of the largest delta).
    ulp = float(np.spacing(np.float32(np.abs(np.asarray(p)).max())))
    np.testing.assert_allclose(a, b, atol=max(1e-4 * np.abs(a).max(), 2 * ulp))


def _keep_gradient():
  """An optax transformation whose state is the last gradient and whose update is zero: the
  step's gradient, exactly as the sharded step computed it, comes back in opt_state."""
  import optax
  zeros = lambda tree: jax.tree_util.tree_map(jnp.zeros_like, tree)
  return optax.GradientTransformation(zeros, lambda grads, state, params=None: (zeros(grads),
                                                                                grads))


@pytest.mark.cpu_only
def test_same_step_on_one_and_eight_devices_gives_the_same_loss():
  """The loss and the per-leaf gradients of one step agree between 1 and 8 devices.

  Parameters after Adam steps are not compared: Adam divides by sqrt(v), so where a gradient is
  ~0 its float32 noise flips the step's sign and moves that parameter by ~lr; how many do depends
  on the CPU's summation order (53,905 of 1M params on a 2-core EPYC, a handful here).
  """
  results = []
  for devices in (1, 8):
    config = _config(data=devices)
    run = run_state.build(config)
    keep = _keep_gradient()
    with jax.set_mesh(run.mesh):
      state = run.init_state()
      state = state.replace(opt_state=keep.init(state.params))
      step = jax.jit(step_lib.make_step(run.model, config, keep, run.model.task_names, run.plan))
      state, metrics = step(state, sharding.to_global(photo_batch(config, run), run.mesh))
      results.append((float(metrics["loss/total"]), jax.device_get(state.opt_state)))
  (loss1, grads1), (loss8, grads8) = results
  # float32 sums of n terms in another order differ by ~sqrt(n) eps relative (eps = 1.2e-7):
  # the loss (n ~ 1e5 pixels) by ~4e-5 at worst, 7e-8 measured.
  assert loss8 == pytest.approx(loss1, rel=1e-5)
  # A gradient element sums n ~ 1e5 products (batch x positions); 8 partial sums plus an
  # all-reduce reorder them, so each leaf moves by ~sqrt(n) eps x its cancellation factor
  # (sum |terms| / |sum|, 10-100 here): 4e-5 to 4e-4; measured at most 7e-5 (the task queries).
  # A sharding bug (a shard's part missing or counted twice, a sum where a mean belongs)
  # moves a leaf by >= 1/8, so 1e-3 separates the two by two orders of magnitude.
  flat1 = jax.tree_util.tree_leaves_with_path(grads1)
  flat8 = jax.tree_util.tree_leaves(grads8)
  assert len(flat1) == len(flat8) > 50
  for (path, a), b in zip(flat1, flat8):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a) > 0, jax.tree_util.keystr(path)  # every leaf gets a gradient
    error = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert error < 1e-3, f"{jax.tree_util.keystr(path)}: relative gradient difference {error:.1e}"


def test_contrastive_loss_is_low_when_tokens_cluster_by_image():
  clustered = jnp.repeat(jnp.eye(4)[:, None, :], 5, axis=1) + 0.01 * jax.random.normal(
      jax.random.key(0), (4, 5, 4))
  mixed = jax.random.normal(jax.random.key(1), (4, 5, 4))
  assert losses.supervised_contrastive(clustered) < losses.supervised_contrastive(mixed)
  # With identical positives and orthogonal negatives the loss is the log of the candidates
  # count minus the positives' share: log((n-1) + (b-1) n e^{-1/t}) - 1/t + 1/t ... checked numerically.
  exact = jnp.repeat(jnp.eye(4)[:, None, :], 5, axis=1)
  t = 0.07
  n, b = 5, 4
  expected = -np.log(np.exp(1 / t) / ((n - 1) * np.exp(1 / t) + (b - 1) * n * np.exp(0)))
  assert float(losses.supervised_contrastive(exact, t)) == pytest.approx(expected, rel=1e-5)


def test_bad_configs_are_refused_with_valid_choices():
  with pytest.raises(ValueError, match="unknown task 'sr_x5'"):
    run_config.validate(_config(tasks=("sr_x5",)))
  with pytest.raises(ValueError, match="no tasks"):
    run_config.validate(_config(tasks=()))
  with pytest.raises(ValueError, match="regime='scratch' trains one task"):
    run_config.validate(_config(regime="scratch"))
  with pytest.raises(ValueError, match="schedule='mixed'; valid: all, one"):
    run_config.validate(_config(schedule="mixed"))
  # the step draws from the seed's 32 bits: 2**32 would repeat seed 0's init and degradations
  for seed in (2**32, -1):
    with pytest.raises(ValueError, match=rf"seed={seed}; valid: 0 <= seed < 2\*\*32"):
      run_config.validate(_config(seed=seed))
  odd = _config()
  odd.data.batch_size = 3
  with pytest.raises(ValueError, match="data.batch_size=3 is odd; conflict probes split") as info:
    run_config.validate(odd)
  assert "\n" not in str(info.value)
  odd.conflicts.every = 0  # no probes: an odd batch is fine
  run_config.validate(odd)


@pytest.mark.parametrize("field,value,message", [
    ("optim.lr", float("inf"), "optim.lr=inf must be finite"),
    ("optim.eps", 0.0, "optim.eps=0.0 must be > 0 and finite"),
    ("optim.gamma", -0.5, "optim.gamma=-0.5 must be > 0 and finite"),
    ("optim.weight_decay", -0.1, r"optim.weight_decay=-0.1 must be >= 0 and finite \(0: Adam"),
    ("optim.grad_clip", float("nan"), r"optim.grad_clip=nan must be >= 0 and finite \(0: no "),
    ("optim.milestones", (0.5, 1.5), r"optim.milestones=\(0.5, 1.5\): 1.5 is not a fraction"),
    ("model.mlp_ratio", 0, "model.mlp_ratio=0 must be >= 1"),
    ("loss.contrastive_weight", -1.0, "loss.contrastive_weight=-1.0 must be >= 0"),
    ("conflicts.ema_beta", 1.5, r"conflicts.ema_beta=1.5 must be in \[0, 1\]"),
    ("eval.tiling", "edge", "eval.tiling='edge'; valid: 'centre', 'ipt', 'mean'"),
    ("eval.seed", -1, r"eval.seed=-1; valid: 0 <= eval.seed < 2\*\*32"),
    ("data.cache_mb", -5, "data.cache_mb=-5 must be >= 0"),
    ("mtl.affinity_lr", float("nan"), "mtl.affinity_lr=nan: both must be >= 0"),
])
def test_a_value_out_of_its_range_is_refused_before_anything_runs(field, value, message):
  # Each was accepted before: a negative weight decay grew the kernels, a negative grad_clip
  # never clipped, a milestone past 1 never decayed, and a bad eval.tiling or ema_beta failed
  # only at the first evaluation, after training.
  config = _config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=message) as info:
    run_config.validate(config)
  assert "\n" not in str(info.value)


def test_init_from_outside_a_fine_tune_and_a_method_s_unknown_argument_are_one_line():
  config = _config(init_from="/tmp/a_joint_run")  # it would train from scratch, silently
  with pytest.raises(ValueError, match=r"init_from=/tmp/a_joint_run is read by regime='finetune' "
                                       r"only; this run \(regime='joint'\) would start from a "
                                       r"fresh initialisation"):
    run_config.validate(config)
  config = _config()
  config.mtl.aggregator, config.mtl.aggregator_args = "cagrad", {"per_leaf": False, "cc": 0.4}
  with pytest.raises(ValueError, match=r"got an unexpected keyword argument 'cc'; its arguments: "
                                       r"c=0.5, norm_eps=0.0001, bisection_steps=64"):
    run_config.validate(config)


def test_a_contrastive_temperature_is_checked_where_the_loss_reads_it():
  config = _config()
  config.loss.temperature = 0.0
  run_config.validate(config)  # contrastive_weight 0: the temperature is never read
  config.loss.contrastive_weight = 0.1
  with pytest.raises(ValueError, match=r"loss.temperature=0.0 must be > 0 and finite"):
    run_config.validate(config)


def test_a_bad_data_step_offset_is_refused_with_one_line():
  import ml_collections

  def with_offset(offset):  # as a config read from JSON: any value reaches the check
    d = _config().to_dict()
    d["data"]["step_offset"] = offset
    return ml_collections.ConfigDict(d)

  for offset in (-1, 1.5, True, "3"):
    with pytest.raises(ValueError, match=re.escape(
        f"data.step_offset={offset!r} must be an integer >= 0 (step k draws the data of step "
        "k + offset")) as info:
      run_config.validate(with_offset(offset))
    assert "\n" not in str(info.value)
  steps = _config().total_steps  # the step's int32 counter: step + offset must fit
  with pytest.raises(ValueError, match=rf"data.step_offset={2**31 - steps} \+ total_steps={steps} "
                                       r"must stay below 2\*\*31"):
    run_config.validate(with_offset(2**31 - steps))
  run_config.validate(with_offset(2**31 - steps - 1))
  old = _config().to_dict()
  del old["data"]["step_offset"]  # a config saved before the field: offset 0
  run_config.validate(ml_collections.ConfigDict(old))


def test_a_folder_tile_smaller_than_a_training_crop_is_refused(tmp_path):
  # Every crop of a tile smaller than it was reflect-padded: mostly mirrored images, one warning.
  from PIL import Image
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
  config = _config(tasks=("denoise_30", "sr_x4"))
  config.data.source, config.data.folder, config.data.folder_tile = "folder", str(tmp_path), 96
  with pytest.raises(ValueError, match=r"data.folder_tile=96 is smaller than task sr_x4's "
                                       r"192-pixel training crop; use data.folder_tile >= 192"):
    run_config.validate(config)
  for tile in (192, 0):  # the crop's side; whole images
    config.data.folder_tile = tile
    run_config.validate(config)
  config.data.folder_tile = -1
  with pytest.raises(ValueError, match=r"data.folder_tile=-1 must be >= 0 \(0: whole images\)"):
    run_config.validate(config)
  config.data.folder_tile, config.data.validation_fraction = 0, 1.0  # else refused at the build
  with pytest.raises(ValueError, match=r"data.validation_fraction=1.0 must be in \[0, 1\)"):
    run_config.validate(config)


def test_bfloat16_compute_trains_with_float32_parameters():
  config = _config(precision="bfloat16")
  config.data.batch_size = 2  # bfloat16 matmuls are slow on CPU; the point is the dtypes
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    step = jax.jit(step_lib.make_step(run.model, config, run.optimizer, run.model.task_names,
                                      run.plan))
    state, metrics = step(run.init_state(), sharding.to_global(photo_batch(config, run), run.mesh))
  assert np.isfinite(float(metrics["loss/total"]))
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(state.params))
