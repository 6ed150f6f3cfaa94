"""Checkpoints (orbax CheckpointManager, async, keep-N) and the run's saved config.

Orbax writes each step into a temporary directory and renames it when complete, so a killed
run never leaves a half-written checkpoint that resume would pick up.
"""
import os

import jax
import orbax.checkpoint as ocp

from mtl import io

CONFIG_FILE = "config.json"
# Fields that may change between a run and its resumption: they do not change what is learned.
RESUMABLE_FIELDS = ("total_steps", "log_every", "eval_every", "checkpoint_every",
                    "keep_checkpoints", "eval", "mesh")


def manager(workdir, keep=3, async_save=True):
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                         enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


class DiskFull(ValueError):
  """Too little free space for the next checkpoint: nothing was written, the last one is kept."""


# Beyond the arrays' bytes: orbax's metadata and the probe/affinity chunks flushed beside a save.
SPACE_MARGIN_BYTES = 4 << 20


def state_bytes(state):
  """Bytes of every array a checkpoint of `state` holds (global sizes; shapes suffice)."""
  return sum(int(x.size) * jax.numpy.dtype(x.dtype).itemsize
             for x in jax.tree_util.tree_leaves(state) if hasattr(x, "dtype"))


def space_shortfall(directory, state):
  """(bytes needed, bytes free) when `directory`'s file system cannot take one more checkpoint
  of `state` (orbax writes the new step before deleting the oldest), else None. A file system
  whose free space cannot be read (an object store) is not checked."""
  import shutil
  path = os.path.abspath(directory)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    free = shutil.disk_usage(path).free
  except OSError:
    return None
  needed = state_bytes(state) + SPACE_MARGIN_BYTES
  return (needed, free) if free < needed else None


def megabytes(n):
  return f"{n / 2 ** 20:.1f} MB"


def save(mngr, step, state, force=False):
  items = dict(params=ocp.args.StandardSave(state.params),
               opt_state=ocp.args.StandardSave(state.opt_state))
  if getattr(state, "mtl_state", None):  # config.mtl's carried state; absent for plain runs
    items["mtl_state"] = ocp.args.StandardSave(state.mtl_state)
  if getattr(state, "ema_params", None) is not None:  # config.optim.ema_decay > 0
    items["ema_params"] = ocp.args.StandardSave(state.ema_params)
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(mngr, abstract_state, step=None):
  """Restore params and optimizer state onto the shardings carried by `abstract_state`."""
  step = mngr.latest_step() if step is None else step
  items = dict(params=ocp.args.StandardRestore(abstract_state.params),
               opt_state=ocp.args.StandardRestore(abstract_state.opt_state))
  carried = getattr(abstract_state, "mtl_state", None)
  if carried:  # the config (checked on resume) asks for config.mtl's state: the save has it
    items["mtl_state"] = ocp.args.StandardRestore(carried)
  ema = getattr(abstract_state, "ema_params", None)
  if ema is not None:  # the config (checked on resume) keeps an EMA: the save has it
    items["ema_params"] = ocp.args.StandardRestore(ema)
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  extra = {"mtl_state": restored["mtl_state"]} if carried else {}
  if ema is not None:
    extra["ema_params"] = restored["ema_params"]
  return abstract_state.replace(step=jax.numpy.asarray(step, jax.numpy.int32),
                                params=restored["params"], opt_state=restored["opt_state"],
                                **extra)


def restore_params(checkpoint_dir, abstract_params, step=None, item="params"):
  """Only the parameters of a run's checkpoint (for fine-tuning and analysis); item='ema_params'
  reads their EMA instead (runs with config.optim.ema_decay > 0)."""
  mngr = ocp.CheckpointManager(os.path.abspath(checkpoint_dir))
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise ValueError(f"no checkpoint in {checkpoint_dir}; point to a run's workdir or its "
                     "checkpoints/ folder that holds a saved step")
  if not os.path.isdir(os.path.join(os.path.abspath(checkpoint_dir), str(step), item)):
    mngr.close()
    raise ValueError(f"step {step} of {checkpoint_dir} holds no {item} (a run trained with "
                     "config.optim.ema_decay > 0 saves ema_params)")
  restored = mngr.restore(step, args=ocp.args.Composite(
      **{item: ocp.args.StandardRestore(abstract_params)}))
  mngr.close()
  return restored[item], step


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


def check_config(workdir, config_dict):
  """Refuse (one line) a config that differs from the workdir's saved one, unless the run there
  never saved a step (then it may be replaced: returns True). No saved config: False."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return False
  saved = io.read_json(path)
  if latest_saved_step(workdir) is None:
    return bool(io.differences(saved, config_dict))
  added = io.refuse_changes(f"workdir {workdir}", saved, config_dict, RESUMABLE_FIELDS,
                            "a run with a different config",
                            "use a new --workdir or the same config to resume")
  if added:
    print(f"{path} predates the config fields {io.field_list(added)}: resuming with their current "
          "values", flush=True)
  return False


def check_or_write_config(workdir, config_dict):
  """First start: save the config. Restart: refuse a different config (one clear line); a run
  that never saved a step takes the new config (its old one is replaced, and said so)."""
  path = os.path.join(workdir, CONFIG_FILE)
  replace = check_config(workdir, config_dict)
  if replace:
    print(f"{path}: replacing the config of a run that never saved a step", flush=True)
  if replace or not os.path.exists(path):
    io.write_json(path, config_dict)
