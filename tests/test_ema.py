"""The parameters' EMA (config.optim.ema_decay): its update, its checkpoint, an exact resume, and
its evaluation beside the raw parameters."""
import json
import os

import jax
import numpy as np
import pytest

from experiments import tiny
from mtl import checkpoints, run_state, sharding, train
from mtl import step as step_lib
from photo_batch import photo_batch


def test_ema_update_is_basicsr_model_ema():
  ema = step_lib.ema_update({"a": np.float32(1.0), "b": {"c": np.arange(3, dtype=np.float32)}},
                            {"a": np.float32(3.0), "b": {"c": np.full(3, 10, np.float32)}}, 0.9)
  assert float(ema["a"]) == pytest.approx(0.9 * 1 + 0.1 * 3, rel=1e-6)  # float32 rounding
  np.testing.assert_allclose(ema["b"]["c"], 0.9 * np.arange(3) + 0.1 * 10, rtol=1e-6)


def _config(ema_decay=0.9, **overrides):
  config = tiny.get_config()
  config.tasks = ("denoise_30", "sr_x2")
  config.data.batch_size, config.mesh.data = 2, 1
  config.total_steps, config.checkpoint_every, config.log_every = 4, 2, 2
  config.optim.schedule, config.optim.warmup_steps = "constant", 0  # straight = resumed schedule
  config.optim.ema_decay = ema_decay
  config.conflicts.every = 0
  config.eval.update(max_side=48, max_images=1)
  for key, value in overrides.items():
    config[key] = value
  return config


def test_a_step_moves_the_ema_towards_the_new_parameters():
  config = _config()
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    for a, b in zip(jax.tree_util.tree_leaves(state.ema_params),
                    jax.tree_util.tree_leaves(state.params)):
      np.testing.assert_array_equal(a, b)  # BasicSR's model_ema(0): a copy of the initial net
    before = jax.device_get(state.params)
    step = jax.jit(step_lib.make_step(run.model, config, run.optimizer, config.tasks,
                                      run.plan))
    after, _ = step(state, sharding.to_global(photo_batch(config, run, 1), run.mesh))
  after = jax.device_get(after)
  moved = [np.abs(a - b).max() for a, b in zip(jax.tree_util.tree_leaves(after.params),
                                                jax.tree_util.tree_leaves(before))]
  assert max(moved) > 1e-4  # the step moved the parameters, so the EMA has something to follow
  for ema, old, new in zip(jax.tree_util.tree_leaves(after.ema_params),
                           jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after.params)):
    np.testing.assert_allclose(ema, 0.9 * old + 0.1 * new, rtol=1e-6, atol=1e-7)  # float32 ops


def _ema(workdir, config):
  abstract = run_state.build(config).abstract_state.params
  ckpt = os.path.join(workdir, "checkpoints")
  return (jax.device_get(checkpoints.restore_params(ckpt, abstract, item="ema_params")[0]),
          jax.device_get(checkpoints.restore_params(ckpt, abstract)[0]))


def test_the_ema_is_checkpointed_resumes_exactly_and_is_evaluated_beside_the_raw(tmp_path):
  straight = str(tmp_path / "straight")
  results = train.train_and_evaluate(_config(), straight)
  resumed = str(tmp_path / "resumed")
  train.train_and_evaluate(_config(total_steps=2), resumed)  # "interrupted" after step 2
  train.train_and_evaluate(_config(), resumed)               # same command, longer budget
  (ema_a, raw_a), (ema_b, raw_b) = _ema(straight, _config()), _ema(resumed, _config())
  for a, b in zip(jax.tree_util.tree_leaves(ema_a) + jax.tree_util.tree_leaves(raw_a),
                  jax.tree_util.tree_leaves(ema_b) + jax.tree_util.tree_leaves(raw_b)):
    np.testing.assert_array_equal(a, b)  # bitwise: the resumed run continues the same EMA
  assert max(np.abs(a - b).max() for a, b in zip(jax.tree_util.tree_leaves(ema_a),
                                                 jax.tree_util.tree_leaves(raw_a))) > 1e-4
  saved = json.load(open(os.path.join(straight, "results.json")))
  assert saved == json.loads(json.dumps(results)) and saved["ema_decay"] == 0.9
  ema_scores = saved["variants"]["ema"]["tasks"]["sr_x2"]["photos"]
  raw_scores = saved["tasks"]["sr_x2"]["photos"]
  assert ema_scores["psnr_y"] != raw_scores["psnr_y"]
  assert ema_scores["input_psnr_y"] == raw_scores["input_psnr_y"]
  # A run without an EMA saves none, and says so when asked for it.
  config = _config(ema_decay=0.0)
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    assert state.ema_params is None
    mngr = checkpoints.manager(str(tmp_path / "plain"), async_save=False)
    checkpoints.save(mngr, 0, state)
    mngr.close()
  with pytest.raises(ValueError, match="step 0 of .* holds no ema_params"):
    _ema(str(tmp_path / "plain"), _config())


def test_a_fine_tune_with_an_ema_trains_and_its_ema_starts_at_the_starting_point(tmp_path):
  # Its EMA was put on the parameters' own buffers, and the step donated both: every fine-tune
  # with an EMA failed on its first step ("Attempt to donate the same buffer twice").
  joint_config = _config(ema_decay=0.0, total_steps=2)
  joint = str(tmp_path / "joint")
  train.train_and_evaluate(joint_config, joint)
  config = _config(regime="finetune", init_from=joint, tasks=("sr_x2",), total_steps=2)
  config.data.step_offset = 2
  train.train_and_evaluate(config, str(tmp_path / "tuned"))
  ema, raw = _ema(str(tmp_path / "tuned"), config)
  abstract = run_state.build(joint_config).abstract_state.params
  start = jax.device_get(checkpoints.restore_params(os.path.join(joint, "checkpoints"),
                                                    abstract)[0])
  flat = lambda p: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(p["body"])])
  # decay 0.9 from the starting body: after 2 steps ema - start = 0.09 (p1 - s) + 0.1 (p2 - s),
  # a fifth of the trained body's move, not the trained body itself
  moved, lagged = flat(raw) - flat(start), flat(ema) - flat(start)
  assert np.linalg.norm(moved) > 0 and np.linalg.norm(lagged) < 0.5 * np.linalg.norm(moved)


def test_a_bad_decay_is_refused_in_one_line():
  with pytest.raises(ValueError, match=r"optim.ema_decay=1.0 must be in \[0, 1\)"):
    run_state.build(_config(ema_decay=1.0))
