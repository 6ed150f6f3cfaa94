"""Checkpoints (orbax CheckpointManager, async, keep-N).

Orbax writes each step into a temporary directory and renames it when complete, so a killed
run never leaves a half-written checkpoint that resume would pick up.

Checkpoints hold the parameters (and Adam's moments) in the model's layout. Those written
before the body's layers were stacked hold one subtree per layer ('body/encoder/0/...'); they
restore into that layout and are stacked on the way in (`ipt.stack_layers`), onto the shardings
asked for.
"""
import contextlib
import io
import logging
import os
import sys
import time
import weakref

import jax
import orbax.checkpoint as ocp
try:  # orbax's own metadata store, from a private module that a later orbax may move
  from orbax.checkpoint._src.metadata import array_metadata_store
except ImportError:
  array_metadata_store = None

from mtl import files
from mtl.models import ipt


def _save_replicated_arrays_whole():
  """Orbax saves a replicated array "replica-parallel" off GPUs: one slice per device, each an
  eager op and, the first time, a compile. For the tiny model's state on 8 CPU devices that is
  6.9 s for the first save and 1.0-1.2 s for the next, against 0.45 s and 0.4 s saved whole
  (from one replica), as orbax already does on GPUs. The same handler otherwise (its metadata
  store too); orbax's warning that it replaces its default is held back. Without that store
  (an orbax that moved it) orbax's default stays: the same checkpoints, saved slower."""
  if array_metadata_store is None:
    return
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()),
        override=True)
  finally:
    absl_logger.setLevel(level)


_save_replicated_arrays_whole()


class _NewestScheduled:
  """An orbax preservation policy: the newest `keep` checkpoints at `scheduled` steps, and the
  latest whatever its step (a stop's own, kept until the next save)."""

  def __init__(self, scheduled, keep):
    self.scheduled, self.keep = frozenset(scheduled), keep

  def should_preserve(self, checkpoints, *, context):
    on = [i for i, c in enumerate(checkpoints) if c.step in self.scheduled][-self.keep:]
    return [i in on or i == len(checkpoints) - 1 for i in range(len(checkpoints))]


# A save off the schedule (a stop's own) says so in its step's metadata: a resume's manager
# then leaves it out of the kept candidates, whatever the schedule it resumes with.
CHECKPOINT_DIR = "checkpoints"  # in a run folder: orbax's step folders
OFF_SCHEDULE = "mtl_off_schedule"
_POLICIES = weakref.WeakKeyDictionary()  # manager -> its _NewestScheduled, for `save`


def _off_schedule(directory, step):
  """Whether the saved step `step` in `directory` was saved off its run's schedule."""
  try:  # orbax's record of a complete step; one without it counts as on the schedule
    record = files.read_json(os.path.join(directory, str(step), "_CHECKPOINT_METADATA"))
  except (OSError, ValueError):
    return False
  return bool((record.get("custom_metadata") or {}).get(OFF_SCHEDULE))


def _kept_candidates(directory, scheduled):
  """`scheduled` and the steps already saved in `directory` (a resume's: a changed
  checkpoint_every must not make them deletable), but the latest where it was a stop's own."""
  saved = saved_steps(directory)
  if saved and saved[-1] not in scheduled and _off_schedule(directory, saved[-1]):
    saved.pop()
  return frozenset(scheduled) | frozenset(saved)


def manager(workdir, keep=3, async_save=True, scheduled=None):
  """The run's CheckpointManager, keeping its newest `keep` checkpoints; with `scheduled` (the
  steps a run saves uninterrupted: run_folder.checkpoint_steps), its newest `keep` of those and
  the latest, so that a stop's own checkpoint (SIGTERM saves where it stops) never costs a
  scheduled one (a study measures conflicts at the newest scheduled steps). The steps a resumed
  run saved before count as scheduled (but a stop's own), whatever its checkpoint_every now.
  Temporary folders of saves cut short (`<step>.orbax-checkpoint-tmp-*`) are removed."""
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
  policy = None if scheduled is None else _NewestScheduled(
      _kept_candidates(directory, scheduled), keep)
  kept = dict(max_to_keep=keep) if policy is None else dict(preservation_policy=policy)
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=async_save,
                                         cleanup_tmp_directories=True, **kept)
  mngr = ocp.CheckpointManager(directory, options=options)
  if policy is not None:
    _POLICIES[mngr] = policy
  return mngr


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
  free = files.free_bytes(directory)
  needed = state_bytes(state) + SPACE_MARGIN_BYTES
  return (needed, free) if free is not None and free < needed else None


def save(mngr, step, state, force=False):
  items = dict(params=ocp.args.StandardSave(state.params),
               opt_state=ocp.args.StandardSave(state.opt_state))
  if getattr(state, "mtl_state", None):  # config.mtl's carried state; absent for plain runs
    items["mtl_state"] = ocp.args.StandardSave(state.mtl_state)
  if getattr(state, "ema_params", None) is not None:  # config.optim.ema_decay > 0
    items["ema_params"] = ocp.args.StandardSave(state.ema_params)
  policy = _POLICIES.get(mngr)
  off = policy is not None and step not in policy.scheduled
  return mngr.save(step, args=ocp.args.Composite(**items), force=force,
                   custom_metadata={OFF_SCHEDULE: True} if off else None)


# Every item a checkpoint may hold (`save`): a reader that knows them all reads one without
# warning about the others.
ITEMS = ("params", "opt_state", "mtl_state", "ema_params")


def _handlers():
  return {name: ocp.StandardCheckpointHandler() for name in ITEMS}


def _saved_per_layer(directory, step):
  """Whether checkpoint `step` holds the body in the per-layer layout (written before the
  stacking). Its own reader: a manager that has not saved knows no handler for 'params'."""
  reader = ocp.CheckpointManager(directory, item_handlers=_handlers())
  try:
    saved = reader.item_metadata(step)["params"]
  finally:
    reader.close()
  tree = getattr(saved, "tree", saved)
  return isinstance(tree, dict) and ipt.is_per_layer(tree.get("body"))


def _layer_of(leaf, i):
  """The abstract layer slice of an abstract stacked leaf, sharded as the leaf is past its
  layer axis."""
  sharding = leaf.sharding
  if isinstance(sharding, jax.sharding.NamedSharding):
    sharding = jax.sharding.NamedSharding(sharding.mesh,
                                          jax.sharding.PartitionSpec(*sharding.spec[1:]))
  return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)


@contextlib.contextmanager
def _held_stderr():
  """Orbax's other reads of a damaged checkpoint each print a traceback on stderr as they fail,
  after the first failure has raised. While restoring, stderr is held: written through on
  success, dropped on failure once those reads have settled (the raised error says it all)."""
  real, held = sys.stderr, io.StringIO()
  sys.stderr = held
  try:
    yield
  except Exception:
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # their futures, when collected
    size, deadline = -1, time.monotonic() + 5
    while size != len(held.getvalue()) and time.monotonic() < deadline:
      size = len(held.getvalue())
      time.sleep(0.3)
    raise
  else:
    real.write(held.getvalue())
  finally:
    sys.stderr = real


class StepMissing(ValueError):
  """A checkpoint step its folder does not hold, or no longer: a run still training removes
  its older steps, even one being read."""


def _other_steps(saved, step):
  """What to do about a damaged checkpoint `step`, naming the other `saved` steps."""
  others = ", ".join(str(s) for s in sorted(saved) if s != step) or "none"
  return (f"the other saved steps: {others}: move {step}/ out of that folder to use the latest "
          "of them")


# What orbax says of a readable checkpoint whose trees or shapes differ from the reader's.
OTHER_PARAMETERS = ("tree structures do not match", "is not compatible with the stored shape")


def _restore_items(mngr, step, abstract):
  """{name: restored tree} for {name: abstract tree} (params, opt_state, ...), a checkpoint in
  the per-layer layout stacked into the abstract trees' layout and shardings."""
  try:
    with _held_stderr():
      per_layer = _saved_per_layer(mngr.directory, step)
      target = (ipt.map_bodies(lambda b: ipt.unstack_layers(b, take=_layer_of), abstract)
                if per_layer else abstract)
      restored = mngr.restore(step, args=ocp.args.Composite(
          **{name: ocp.args.StandardRestore(tree) for name, tree in target.items()}))
  except Exception as error:  # orbax and tensorstore raise plain Exceptions for damaged files
    reason = " ".join(str(error.__cause__ or error).split())[:240]
    if any(said in reason for said in OTHER_PARAMETERS):  # readable, not what was asked for
      raise ValueError(f"checkpoint step {step} in {mngr.directory} holds other parameters "
                       f"than its reader's model and config ({reason})") from None
    if not os.path.isdir(os.path.join(str(mngr.directory), str(step))):  # not damaged: gone
      raise StepMissing(f"checkpoint step {step} in {mngr.directory} was removed while it was "
                        "read (a run still training keeps its latest keep_checkpoints steps); "
                        "read a step it keeps") from None
    raise ValueError(f"checkpoint step {step} in {mngr.directory} cannot be read ({reason}); "
                     + _other_steps(mngr.all_steps(), step)) from None
  restored = {name: restored[name] for name in abstract}
  if not per_layer:
    return restored
  shardings = jax.tree_util.tree_map(lambda a: a.sharding, abstract)
  return jax.jit(lambda tree: ipt.map_bodies(ipt.stack_layers, tree),
                 out_shardings=shardings)(restored)


def restore(mngr, abstract_state, step=None):
  """Restore params and optimizer state onto the shardings carried by `abstract_state`."""
  step = mngr.latest_step() if step is None else step
  items = dict(params=abstract_state.params, opt_state=abstract_state.opt_state)
  carried = getattr(abstract_state, "mtl_state", None)
  if carried:  # the config (checked on resume) asks for config.mtl's state: the save has it
    items["mtl_state"] = carried
  ema = getattr(abstract_state, "ema_params", None)
  if ema is not None:  # the config (checked on resume) keeps an EMA: the save has it
    items["ema_params"] = ema
  restored = _restore_items(mngr, step, items)
  extra = {"mtl_state": restored["mtl_state"]} if carried else {}
  if ema is not None:
    extra["ema_params"] = restored["ema_params"]
  return abstract_state.replace(step=jax.numpy.asarray(step, jax.numpy.int32),
                                params=restored["params"], opt_state=restored["opt_state"],
                                **extra)


def restore_params(checkpoint_dir, abstract_params, step=None, item="params"):
  """(params, step): only the parameters of a run's checkpoint (for fine-tuning and analysis),
  from its workdir or its checkpoints/ folder; the latest step unless `step`. item='ema_params'
  reads their EMA instead (runs with config.optim.ema_decay > 0)."""
  checkpoint_dir = checkpoint_dir_of(checkpoint_dir)
  # create=False: opening a user's folder writes nothing (read_only=True would warn each time)
  options = ocp.CheckpointManagerOptions(create=False)
  mngr = ocp.CheckpointManager(os.path.abspath(checkpoint_dir), options=options,
                               item_handlers=_handlers())
  saved = mngr.all_steps()
  if step is not None and step not in saved:
    mngr.close()
    raise StepMissing(f"step {step} has no checkpoint in {checkpoint_dir}; saved steps: "
                      f"{', '.join(map(str, sorted(saved))) or 'none'}")
  step = max(saved, default=None) if step is None else step  # the latest, as latest_step()
  if step is None:
    mngr.close()
    raise ValueError(f"no checkpoint in {checkpoint_dir}; point to a run's workdir or its "
                     "checkpoints/ folder that holds a saved step")
  if not os.path.isdir(os.path.join(os.path.abspath(checkpoint_dir), str(step), item)):
    mngr.close()
    why = ("a run trained with config.optim.ema_decay > 0 saves ema_params" if item != "params"
           else "damaged; " + _other_steps(saved, step))
    raise ValueError(f"step {step} of {checkpoint_dir} holds no {item} ({why})")
  params = _restore_items(mngr, step, {item: abstract_params})[item]
  mngr.close()
  return params, step


def checkpoint_dir_of(path):
  """Accept a run's workdir or its checkpoints/ folder."""
  inner = os.path.join(path, CHECKPOINT_DIR)
  return inner if os.path.isdir(inner) else path


def step_folders(folder):
  """The names of orbax step folders directly in `folder` (complete, `<step>`, or cut short,
  `<step>.orbax-checkpoint-tmp-*`), sorted by step; none for a folder that is not there."""
  if not os.path.isdir(folder):
    return []
  names = [d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and (
      d.isdigit() or d.partition(".orbax-checkpoint-tmp-")[0].isdigit() and ".orbax-" in d)]
  return sorted(names, key=lambda d: (int(d.partition(".")[0]), d))


def saved_steps(workdir):
  """The complete checkpoint steps of a run (its workdir or checkpoints/), ascending.

  Orbax renames `<step>.orbax-checkpoint-tmp-*` to `<step>` when a save completes, so only
  all-digit names count; nothing is created or locked (unlike a CheckpointManager).
  """
  folder = checkpoint_dir_of(workdir)
  if not os.path.isdir(folder):
    return []
  return sorted(int(d) for d in os.listdir(folder) if d.isdigit())


def latest_saved_step(workdir):
  """The newest complete checkpoint step of a run (its workdir or checkpoints/), or None."""
  return (saved_steps(workdir) or [None])[-1]

