"""Checkpoints (orbax CheckpointManager, async, keep-N).

Orbax writes each step into a temporary directory and renames it when complete, so a killed
run never leaves a half-written checkpoint that resume would pick up.
"""
import os

import jax
import orbax.checkpoint as ocp


def manager(workdir, keep=3, async_save=True):
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def save(mngr, step, state, force=False):
  items = dict(params=ocp.args.StandardSave(state.params),
               opt_state=ocp.args.StandardSave(state.opt_state))
  if getattr(state, "mtl_state", None):  # config.mtl's carried state; absent for plain runs
    items["mtl_state"] = ocp.args.StandardSave(state.mtl_state)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mngr, abstract_state, step=None):
  """Restore params and optimizer state onto the shardings carried by `abstract_state`."""
  step = mngr.latest_step() if step is None else step
  items = dict(params=ocp.args.StandardRestore(abstract_state.params),
               opt_state=ocp.args.StandardRestore(abstract_state.opt_state))
  carried = getattr(abstract_state, "mtl_state", None)
  if carried:  # the config (checked on resume) asks for config.mtl's state: the save has it
    items["mtl_state"] = ocp.args.StandardRestore(carried)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  extra = {"mtl_state": restored["mtl_state"]} if carried else {}
  return abstract_state.replace(step=jax.numpy.asarray(step, jax.numpy.int32),
                                params=restored["params"], opt_state=restored["opt_state"],
                                **extra)


def restore_params(checkpoint_dir, abstract_params, step=None):
  """Only the parameters of a run's checkpoint (for fine-tuning and analysis)."""
  mngr = ocp.CheckpointManager(os.path.abspath(checkpoint_dir))
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise ValueError(f"no checkpoint in {checkpoint_dir}; point to a run's workdir or its "
                     "checkpoints/ folder that holds a saved step")
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params)))
  mngr.close()
  return restored["params"], step


def checkpoint_dir_of(path):
  """Accept a run's workdir or its checkpoints/ folder."""
  inner = os.path.join(path, "checkpoints")
  return inner if os.path.isdir(inner) else path


def latest_saved_step(workdir):
  """The newest complete checkpoint step of a run (its workdir or checkpoints/), or None.

  Orbax renames `<step>.orbax-checkpoint-tmp-*` to `<step>` when a save completes, so only
  all-digit names count; nothing is created or locked (unlike a CheckpointManager).
  """
  folder = checkpoint_dir_of(workdir)
  if not os.path.isdir(folder):
    return None
  return max((int(d) for d in os.listdir(folder) if d.isdigit()), default=None)

