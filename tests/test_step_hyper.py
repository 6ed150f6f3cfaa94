"""The step's traced values (step.step_args): runs that differ only in seed, learning rate or
length lower to one program (what lets a study's runs share the compiled step through the
persistent cache), and the traced values compute what the same values as constants did."""
import jax
import numpy as np
import optax

from experiments import tiny
from mtl import optim, run_state, sharding
from mtl import step as step_lib
from mtl.tasks import task_id
from photo_batch import photo_batch

TASK = "denoise_30"


def _config(**optim):
  config = tiny.get_config()
  config.tasks = (TASK,)
  config.model.patch_size, config.data.batch_size, config.mesh.data = 24, 2, 1
  config.optim.update(optim)
  return config


def _optax_schedule(o, total):
  """The schedules as optax builds them (mtl.optim's reference)."""
  def warmup_then(decay):
    if o.warmup_steps <= 0:
      return decay
    return optax.join_schedules([optax.linear_schedule(0.0, o.lr, o.warmup_steps), decay],
                                [o.warmup_steps])
  return {
      "constant": lambda: warmup_then(optax.constant_schedule(o.lr)),
      "cosine": lambda: optax.warmup_cosine_decay_schedule(
          0.0, o.lr, o.warmup_steps, max(total, o.warmup_steps + 1), o.lr * o.final_lr_ratio),
      "step": lambda: warmup_then(optax.piecewise_constant_schedule(
          o.lr, {int(m * total) - o.warmup_steps: o.gamma for m in o.milestones})),
  }[o.schedule]()


def test_schedules_match_optax_traced_and_logged():
  counts = np.arange(0, 45)
  for schedule in ("constant", "cosine", "step"):
    for warmup, total in ((0, 40), (5, 40), (5, 3)):
      o = _config(schedule=schedule, warmup_steps=warmup, lr=3e-4,
                  milestones=(0.5, 0.5, 0.8)).optim  # two milestones at one step count once
      expected = np.asarray(jax.vmap(_optax_schedule(o, total))(counts))
      args = optim.schedule_args(o, total)
      traced = jax.jit(jax.vmap(lambda c, a: optim.LR_SCHEDULES[schedule](a, c),
                                (0, None)))(counts, args)
      logged = [optim.make_optimizer(o, total)[1](c) for c in counts]
      # float32 schedules: the same formulas in another order (alpha's 1 - x on the host or in
      # float32; numpy's float64 for the logs) differ by a few float32 ulp of their terms, which
      # are of the peak lr's size (the cosine's 1 + cos cancels near its end)
      ulps = dict(rtol=1e-6, atol=1e-6 * o.lr, err_msg=schedule)
      np.testing.assert_allclose(traced, expected, **ulps)
      np.testing.assert_allclose(logged, expected, **ulps)
      # one structure for every run of a schedule: the arguments of one compiled step
      other = optim.schedule_args(_config(schedule=schedule, warmup_steps=1, lr=1.0).optim, 1000)
      assert jax.tree.structure(other) == jax.tree.structure(args)
      assert [a.dtype for a in jax.tree.leaves(other)] == [a.dtype for a in jax.tree.leaves(args)]


def _moves(before, after):
  return np.concatenate([np.ravel(np.asarray(b) - np.asarray(a)) for a, b in zip(
      jax.tree.leaves(before.params), jax.tree.leaves(after.params))])


def test_seeds_and_lrs_share_one_step_and_still_differ():
  config = _config(schedule="cosine", warmup_steps=0, lr=1e-3)
  other = _config(schedule="cosine", warmup_steps=0, lr=5e-4)
  config.total_steps, other.total_steps, other.seed = 10, 50, 7
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    batch = sharding.to_global(photo_batch(config, run), run.mesh)
    step = jax.jit(step_lib.make_step(run.model, config, run.optimizer, (TASK,), run.plan))
    hyper, hyper_other = step_lib.step_args(config), step_lib.step_args(other)
    # One program: the persistent cache's key is the lowered module (with its compile options).
    assert (step.lower(state, batch, hyper).as_text()
            == step.lower(state, batch, hyper_other).as_text())
    compiled = step.lower(state, batch, hyper).compile()
    (a, metrics_a), (b, metrics_b) = compiled(state, batch, hyper), compiled(state, batch,
                                                                            hyper_other)
    # The reference: optax's own adamw and schedule, the seed and lr as constants (hyper=None).
    o = config.optim
    reference = optax.chain(optax.adamw(_optax_schedule(o, config.total_steps), b1=o.b1, b2=o.b2,
                                        eps=o.eps, weight_decay=o.weight_decay))  # grad_clip 0
    assert jax.tree.structure(reference.init(state.params)) == jax.tree.structure(state.opt_state)
    ref, metrics_ref = jax.jit(step_lib.make_step(run.model, config, reference, (TASK,),
                                                  run.plan))(state, batch)
    specs = [run.model.specs[0]]
    degrade = jax.jit(lambda batch, seed: step_lib.degrade_batch(
        specs, [task_id(TASK)], config, 0, batch, seed=seed)[0][TASK])
    inputs = {c.seed: np.asarray(degrade(batch, step_lib.step_args(c)["seed"]))
              for c in (config, other)}
    constant = np.asarray(step_lib.degrade_batch(specs, [task_id(TASK)], config, 0, batch)[0][TASK])
  # Another seed, other degradations (sigma-30 noise on the [0, 255] scale), another loss.
  assert np.abs(inputs[0] - inputs[7]).mean() > 10
  assert float(metrics_a["loss/total"]) != float(metrics_b["loss/total"])
  # A traced seed draws the random bits a constant one does; the float ops on them agree to
  # float32 rounding (XLA may fuse a constant's program differently).
  np.testing.assert_allclose(inputs[0], constant, rtol=1e-6, atol=1e-3)
  np.testing.assert_allclose(float(metrics_a["loss/total"]), float(metrics_ref["loss/total"]),
                             rtol=1e-6)
  # Adam's first step moves a parameter by lr * g / (|g| + eps): lr where |g| >> eps.
  move_a, move_b, move_ref = _moves(state, a), _moves(state, b), _moves(state, ref)
  np.testing.assert_allclose(np.median(np.abs(move_a)), 1e-3, rtol=1e-3)
  np.testing.assert_allclose(np.median(np.abs(move_b)), 5e-4, rtol=1e-3)
  # Traced lr vs optax's constant: the same float32 lr and the gradients of one loss up to
  # float32 rounding; g / (|g| + eps) is 1-Lipschitz in g / |g|, so a move differs from the
  # reference's by at most lr times the gradient's relative rounding (~1e-6, 1e-5 with margin),
  # or by that times |g| / eps where |g| ~ eps (absolute bound lr * 1e-5 covers both).
  np.testing.assert_allclose(move_a, move_ref, rtol=1e-5, atol=1e-3 * 1e-5)



def test_a_finetunes_step_k_draws_a_scratch_runs_step_k_plus_its_pretraining_steps():
  """data.step_offset = P (a study's fine-tune after P pre-training steps): the real pipeline
  and the real step give its step k the crops and degradations of a scratch run's step k + P,
  one compiled step for both; offset 0 gives step k its own, as every run drew before."""
  import skimage.data
  from mtl.data import pipeline
  pretraining, k = 6, 2
  scratch, finetune = _config(), _config()
  finetune.data.step_offset = pretraining
  images = [skimage.data.astronaut(), skimage.data.coffee()]
  run = run_state.build(scratch)
  spec = run.model.specs[0]
  with jax.set_mesh(run.mesh):
    start = run.init_state()
    step = jax.jit(step_lib.make_step(run.model, scratch, run.optimizer, (TASK,), run.plan))
    degrade = jax.jit(lambda step, crops, seed: step_lib.degrade_batch(
        [spec], [task_id(TASK)], scratch, step, crops, seed=seed)[0][TASK])
    draws = {}
    for name, config, run_step in (("finetune", finetune, k), ("scratch", scratch, k + pretraining),
                                   ("scratch_k", scratch, k)):
      (_, crops), = pipeline.train_batches(
          images, run.model.specs, config.model.patch_size, config.data.batch_size, config.seed,
          start_step=run_step, num_steps=1, num_threads=0,
          step_offset=pipeline.step_offset(config.data))
      crops, hyper = sharding.to_global(crops, run.mesh), step_lib.step_args(config)
      state = start.replace(step=jax.numpy.asarray(run_step, jax.numpy.int32))
      inputs = degrade(step_lib.data_step(state.step, hyper), crops, hyper["seed"])
      _, metrics = step(state, crops, hyper)
      draws[name] = (np.asarray(crops[TASK]), np.asarray(inputs), float(metrics["loss/total"]))
    # one program for both: the offset is traced, as the seed (a study's runs share the step)
    assert (step.lower(start, crops, step_lib.step_args(finetune)).as_text()
            == step.lower(start, crops, step_lib.step_args(scratch)).as_text())
    # offset 0: the step draws at the run's own step, the key every run had before the offset
    before = degrade(np.int32(k), sharding.to_global({TASK: draws["scratch_k"][0]}, run.mesh),
                     step_lib.step_args(scratch)["seed"])
  for a, b in zip(draws["finetune"], draws["scratch"]):
    np.testing.assert_array_equal(a, b)  # same crops, degraded inputs and loss, bit for bit
  # Without the offset the fine-tune would draw the pre-training's step k again: other samples.
  assert not np.array_equal(draws["finetune"][0], draws["scratch_k"][0])
  assert np.abs(draws["finetune"][1] - draws["scratch_k"][1]).mean() > 10
  np.testing.assert_array_equal(draws["scratch_k"][1], np.asarray(before))


def test_weight_decay_pulls_the_kernels_alone_toward_zero():
  # AdamW's decoupled decay on zero gradients: a kernel moves by -lr * wd * p; biases, LayerNorm
  # scales (decayed, they would shrink toward 0, not 1), embeddings, task queries and the
  # uncertainty weighting's log-variances stay where they are.
  config = _config(schedule="constant", warmup_steps=0, lr=1e-2, weight_decay=0.5)
  config.tasks = (TASK, "sr_x2")
  config.mtl.loss_weighting = "uncertainty"
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    params = run.init_state().params
  params["loss_weighting"] = jax.tree.map(lambda p: p + 1.0, params["loss_weighting"])
  optimizer, _ = optim.make_optimizer(config.optim, config.total_steps)
  updates, _ = optimizer.update(jax.tree.map(np.zeros_like, params), optimizer.init(params),
                                params)
  names = set()
  for (path, update), param in zip(jax.tree_util.tree_leaves_with_path(updates),
                                   jax.tree_util.tree_leaves(params)):
    name = jax.tree_util.keystr(path)
    names.add(getattr(path[-1], "key", None))
    decayed = getattr(path[-1], "key", None) == "kernel" and "loss_weighting" not in name
    want = -1e-2 * 0.5 * np.asarray(param, np.float64) if decayed else 0.0 * param
    np.testing.assert_allclose(np.asarray(update, np.float64), want, rtol=1e-5, atol=1e-12,
                               err_msg=name)
  assert {"kernel", "bias", "scale", "pos_embed", "log_var", TASK} <= names, names
