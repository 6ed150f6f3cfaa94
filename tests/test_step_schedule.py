"""schedule='one': the parameters and Adam moments of the tasks absent from a step stay put."""
import jax
import numpy as np
import optax

from experiments import tiny
from mtl import run_state, sharding
from mtl import step as step_lib
from photo_batch import photo_batch

TASKS = ("denoise_30", "sr_x2", "derain")
PRESENT, ABSENT = "denoise_30", ("sr_x2", "derain")




def _task_leaves(tree, task):
  """(path, leaf) of every leaf under heads/queries/tails/<task>, wherever it sits in `tree`."""
  return [(jax.tree_util.keystr(p), np.asarray(v))
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]
          if step_lib._is_absent_leaf(p, (task,))]


def test_absent_tasks_params_and_adam_moments_do_not_move():
  config = tiny.get_config()
  config.tasks, config.schedule = TASKS, "one"
  config.model.patch_size, config.data.batch_size, config.mesh.data = 24, 2, 1
  config.optim.warmup_steps, config.optim.weight_decay = 0, 1e-2  # decay would move them too
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    # Non-zero Adam moments everywhere (as after earlier steps), so absent tasks have some to lose.
    fill = lambda x: np.full(x.shape, 1e-3, x.dtype) if x.ndim else x
    before = state.replace(opt_state=jax.tree_util.tree_map(fill, state.opt_state))
    batch = {PRESENT: photo_batch(config, run, 1)[PRESENT]}
    after, _ = jax.jit(step_lib.make_step(run.model, config, run.optimizer, (PRESENT,), run.plan))(
        before, sharding.to_global(batch, run.mesh))
    # What a bare optax update on the step's zero gradients would have done to them.
    zeros = jax.tree_util.tree_map(np.zeros_like, before.params)
    updates, drifted_opt = jax.jit(run.optimizer.update)(zeros, before.opt_state, before.params)
    drifted = optax.apply_updates(before.params, updates)
  for absent in ABSENT:
    for tree in ("params", "opt_state"):
      old, new = _task_leaves(getattr(before, tree), absent), _task_leaves(getattr(after, tree), absent)
      assert [p for p, _ in old] == [p for p, _ in new] and old
      for (path, a), (_, b) in zip(old, new):
        np.testing.assert_array_equal(a, b, err_msg=f"{absent} {tree} {path} moved")
    # The guard is needed: plain optax moves an absent task's parameters and moments.
    moved = lambda t0, t1: any(not np.array_equal(a, b) for (_, a), (_, b) in
                               zip(_task_leaves(t0, absent), _task_leaves(t1, absent)))
    assert moved(before.params, drifted) and moved(before.opt_state, drifted_opt)
  # The present task and the body move: every one of their leaves changes.
  present = lambda s: ([s.params["queries"][PRESENT]]
                       + jax.tree_util.tree_leaves(s.params["heads"][PRESENT])
                       + jax.tree_util.tree_leaves(s.params["tails"][PRESENT])
                       + [s.params["body"]["token_embed"]["kernel"]])
  for a, b in zip(present(before), present(after)):
    assert not np.array_equal(np.asarray(a), np.asarray(b))
