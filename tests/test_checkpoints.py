"""Checkpoints written before the body's layers were stacked (one subtree per layer) restore
into the stacked layout: parameters and Adam's moments, whole runs and parameters only."""
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import small
from mtl import checkpoints, run_folder, run_state, sharding
from mtl import step as step_lib
from mtl.models import ipt
from photo_batch import photo_batch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_per_layer_checkpoint_restores_stacked(tmp_path, caplog):
  config = small.get_config()
  config.tasks = ("denoise_30", "sr_x2")
  config.precision, config.model.patch_size, config.data.batch_size = "float32", 12, 2
  config.model.init, config.mesh.data = "flax", 1  # layers that differ from each other
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    state = run.init_state()
    step = jax.jit(step_lib.make_step(run.model, config, run.optimizer, run.model.task_names,
                                      run.plan))
    state, _ = step(state, sharding.to_global(photo_batch(config, run), run.mesh))  # moments != 0
    # The layout the model had before the stacking: body/encoder/<layer>/..., in the parameters
    # and in Adam's moments alike.
    old = state.replace(params=ipt.map_bodies(ipt.unstack_layers, state.params),
                        opt_state=ipt.map_bodies(ipt.unstack_layers, state.opt_state))
    assert "encoder/1/attn/query/kernel" in ipt.shared_layer_names(old.params["body"])
    mngr = checkpoints.manager(tmp_path, async_save=False)
    checkpoints.save(mngr, 1, old)
    mngr.wait_until_finished()
    saved = mngr.item_metadata(1)["params"]
    assert set(saved.tree["body"]["encoder"]) == {"0", "1"}  # written per layer
    restored = checkpoints.restore(mngr, run.abstract_state)
    with caplog.at_level(logging.WARNING):
      params, step_saved = checkpoints.restore_params(tmp_path / "checkpoints",
                                                      run.abstract_state.params)
    from_workdir, _ = checkpoints.restore_params(str(tmp_path), run.abstract_state.params)
    mngr.close()
  # Reading the parameters alone leaves the optimizer state unread, without a warning about it.
  assert not [r.getMessage() for r in caplog.records if "could not be restored" in r.getMessage()]
  assert int(restored.step) == step_saved == 1
  for tree, want in ((restored.params, state.params), (restored.opt_state, state.opt_state),
                     (params, state.params), (from_workdir, state.params)):
    assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(want)
    jax.tree.map(np.testing.assert_array_equal, tree, want)
  assert all(a.sharding == s for a, s in zip(jax.tree_util.tree_leaves(restored.params),
                                             jax.tree_util.tree_leaves(run.state_shardings.params)))


def test_restoring_from_a_folder_without_a_checkpoint_says_so_and_writes_nothing(tmp_path):
  missing = tmp_path / "no" / "such"
  with pytest.raises(ValueError, match=r"no checkpoint in .*; point to a run's workdir"):
    checkpoints.restore_params(str(missing), {"w": jax.ShapeDtypeStruct((2,), np.float32)})
  assert not (tmp_path / "no").exists()  # a user's path is only read


def test_a_stop_s_checkpoint_never_costs_a_scheduled_one(tmp_path):
  """keep=4, every 5 of 37 steps: the newest 4 scheduled checkpoints and the latest. A stop's
  checkpoint (26, then 28 after a resume) stays only until the next save; the last step (37)
  is on the schedule. The study measures at the newest scheduled steps."""
  state = step_lib.TrainState(step=0, params={"w": np.zeros(4, np.float32)},
                              opt_state={"m": np.zeros(4, np.float32)})
  mngr = checkpoints.manager(tmp_path, keep=4, scheduled=run_folder.checkpoint_steps(37, 5))
  kept = {}
  for step in (5, 10, 15, 20, 25, 26, 28, 30, 35, 37):
    checkpoints.save(mngr, step, state, force=True)
    mngr.wait_until_finished()
    kept[step] = mngr.all_steps()
  mngr.close()
  assert kept[25] == [10, 15, 20, 25]
  assert kept[26] == [10, 15, 20, 25, 26] and kept[28] == [10, 15, 20, 25, 28]
  assert kept[30] == [15, 20, 25, 30] and kept[35] == [20, 25, 30, 35]
  assert kept[37] == [25, 30, 35, 37] and checkpoints.latest_saved_step(str(tmp_path)) == 37


def test_an_orbax_without_its_private_metadata_store_module_keeps_its_default_handler(tmp_path):
  # mtl.checkpoints imports that module from orbax's _src; an orbax that moved it must still
  # import mtl and save and restore (orbax's own handler, replica-parallel), not fail at import
  script = f"""
import sys
import jax, numpy as np
import orbax.checkpoint as ocp
import orbax.checkpoint._src.metadata as metadata
del metadata.array_metadata_store
sys.modules["orbax.checkpoint._src.metadata.array_metadata_store"] = None  # as if it moved
before = ocp.type_handlers.get_type_handler(jax.Array)
from mtl import checkpoints, step
assert checkpoints.array_metadata_store is None
assert ocp.type_handlers.get_type_handler(jax.Array) is before
state = step.TrainState(step=0, params={{"w": np.arange(4, dtype=np.float32)}},
                        opt_state={{"m": np.zeros(4, np.float32)}})
mngr = checkpoints.manager({str(tmp_path)!r}, async_save=False)
checkpoints.save(mngr, 1, state)
mngr.close()
params, _ = checkpoints.restore_params({str(tmp_path)!r},
                                       {{"w": jax.ShapeDtypeStruct((4,), np.float32)}})
np.testing.assert_array_equal(params["w"], np.arange(4, dtype=np.float32))
print("restored")
"""
  out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, text=True, capture_output=True,
                       timeout=300)
  assert out.returncode == 0 and out.stdout.strip().endswith("restored"), out.stderr[-2000:]


# orbax's other failed reads report when collected, after the test; the launcher test checks stderr.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_damaged_checkpoint_is_one_line_naming_the_other_steps(tmp_path):
  # Several arrays: orbax reads them concurrently, and the others fail after the first.
  params = {f"w{i}": np.arange(4096, dtype=np.float32) + i for i in range(8)}
  state = step_lib.TrainState(step=0, params=params, opt_state={"m": np.zeros(4, np.float32)})
  mngr = checkpoints.manager(tmp_path, async_save=False)
  for step in (1, 2):
    checkpoints.save(mngr, step, state)
  mngr.close()
  data = tmp_path / "checkpoints" / "2" / "params"
  damaged = [p for p in data.rglob("*") if p.is_file() and p.parent.name == "d"]
  assert damaged  # the OCDBT data files of step 2's parameters
  for path in damaged:
    path.write_bytes(path.read_bytes()[:10])
  abstract = {k: jax.ShapeDtypeStruct((4096,), np.float32) for k in params}
  with pytest.raises(ValueError, match=r"checkpoint step 2 in .*checkpoints cannot be read \(.*\); "
                                       r"the other saved steps: 1: move 2/ out of that folder"):
    checkpoints.restore_params(str(tmp_path), abstract)
  restored, _ = checkpoints.restore_params(str(tmp_path), abstract, step=1)
  jax.tree.map(np.testing.assert_array_equal, restored, state.params)


def test_a_step_the_run_removes_while_it_is_read_is_not_called_damaged(tmp_path):
  # a run still training (keep_checkpoints) deleted the step analyze was reading: the advice to
  # move it away as damaged was wrong, and analyze.py retries the latest when given no --step
  import shutil
  params = {"w": np.arange(64, dtype=np.float32)}
  state = step_lib.TrainState(step=0, params=params, opt_state={"m": np.zeros(4, np.float32)})
  mngr = checkpoints.manager(tmp_path, async_save=False)
  for step in (1, 2):
    checkpoints.save(mngr, step, state)
  mngr.close()
  abstract = {"w": jax.ShapeDtypeStruct((64,), np.float32)}
  reader = checkpoints.manager(tmp_path, async_save=False)  # it listed step 2 ...
  assert reader.all_steps() == [1, 2]
  shutil.rmtree(tmp_path / "checkpoints" / "2")  # ... which the run then removed
  with pytest.raises(checkpoints.StepMissing, match=r"^checkpoint step 2 in .*checkpoints was "
                     r"removed while it was read \(a run still training keeps its latest "
                     r"keep_checkpoints steps\); read a step it keeps$"):
    checkpoints._restore_items(reader, 2, {"params": abstract})
  reader.close()
  with pytest.raises(checkpoints.StepMissing, match=r"step 2 has no checkpoint .*; saved steps: 1"):
    checkpoints.restore_params(str(tmp_path), abstract, step=2)


def test_a_trainer_resuming_a_damaged_checkpoint_prints_one_line(tmp_path):
  """orbax's other reads of the damaged step fail after the first, each with a traceback on
  stderr, and its pending reads print more at the interpreter's exit: one line is left."""
  run = [sys.executable, "launch/train.py", "--config=experiments/tiny.py:sr_x2",
         f"--workdir={tmp_path}", "--config.mesh.data=1", "--config.checkpoint_every=1",
         "--config.eval.max_images=1", "--config.eval.max_side=48"]
  out = subprocess.run(run + ["--config.total_steps=2"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  for path in (tmp_path / "checkpoints" / "2").rglob("*"):
    if path.is_file() and path.parent.name == "d":  # the OCDBT data files
      path.write_bytes(path.read_bytes()[:10])
  out = subprocess.run(run + ["--config.total_steps=3"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 1
  assert out.stderr.startswith("error: checkpoint step 2 in ") and out.stderr.count("\n") == 1, (
      out.stderr[:2000])
  assert "the other saved steps: 1: move 2/ out of that folder" in out.stderr


def _kept_after(tmp_path, runs, keep=2):
  """Each of `runs` ((total_steps, checkpoint_every, steps saved)) a trainer of its own on one
  workdir, as resumes are: the steps kept after each."""
  state = step_lib.TrainState(step=0, params={"w": np.zeros(4, np.float32)},
                              opt_state={"m": np.zeros(4, np.float32)})
  kept = []
  for total, every, steps in runs:
    mngr = checkpoints.manager(tmp_path, keep=keep,
                               scheduled=run_folder.checkpoint_steps(total, every))
    for step in steps:
      checkpoints.save(mngr, step, state, force=True)
      mngr.wait_until_finished()
    mngr.close()
    kept.append(checkpoints.saved_steps(str(tmp_path)))
  return kept


def test_a_resume_with_another_checkpoint_every_keeps_the_steps_saved_before(tmp_path):
  # keep=2: saved 2 and 4 every 2 steps, resumed to 6 every 3 steps: 4 is no longer on the
  # schedule, and must not be deleted for it.
  assert _kept_after(tmp_path, [(4, 2, (2, 4)), (6, 3, (6,))]) == [[2, 4], [4, 6]]


def test_a_stop_s_checkpoint_never_costs_a_scheduled_one_across_a_resume(tmp_path):
  # keep=2, every 5 of 20 steps: a stop at 12 (its own checkpoint), resumed by a new trainer
  # that stops again at 13 and then at 17; neither costs 5 or 10, nor 10 and 15.
  kept = _kept_after(tmp_path, [(20, 5, (5, 10, 12)), (20, 5, (13,)), (20, 5, (15, 17)),
                                (20, 5, (20,))])
  assert kept == [[5, 10, 12], [5, 10, 13], [10, 15, 17], [15, 20]]


def test_a_save_cut_short_leaves_no_temporary_folder_once_a_trainer_saves_again(tmp_path):
  state = step_lib.TrainState(step=0, params={"w": np.zeros(4, np.float32)},
                              opt_state={"m": np.zeros(4, np.float32)})
  cut = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1733540000123456"  # killed mid-save
  (cut / "params").mkdir(parents=True)
  (cut / "params" / "half-written").write_bytes(b"x")
  mngr = checkpoints.manager(tmp_path, keep=2, scheduled=run_folder.checkpoint_steps(6, 2))
  checkpoints.save(mngr, 4, state, force=True)
  mngr.wait_until_finished()
  mngr.close()
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]


def test_a_trainer_resumed_with_another_checkpoint_every_keeps_its_saved_steps(tmp_path):
  """launch/train.py, keep_checkpoints=2: 2 and 4 saved every 2 steps, then resumed to 6 every
  3 steps (constant lr: total_steps may change) keeps 4 and 6; the temporary folder of a save
  cut short (planted) is gone."""
  run = [sys.executable, "launch/train.py", "--config=experiments/tiny.py:sr_x2",
         f"--workdir={tmp_path}", "--config.mesh.data=1", "--config.keep_checkpoints=2",
         "--config.optim.schedule=constant", "--config.conflicts.every=0",
         "--config.eval.max_images=1", "--config.eval.max_side=48"]
  out = subprocess.run(run + ["--config.total_steps=4", "--config.checkpoint_every=2"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert checkpoints.saved_steps(str(tmp_path)) == [2, 4]
  cut = tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-1733540000123456"
  (cut / "params").mkdir(parents=True)
  out = subprocess.run(run + ["--config.total_steps=6", "--config.checkpoint_every=3"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "6"]
