"""A run's folder: its file names, its saved config read back as the config files hold it, the
checks on a run to start from, and a state from parameters."""
import os

import jax
import numpy as np
import pytest

from experiments import tiny
from mtl import files, optim, run_defaults, run_folder, run_state


def test_results_names():
  assert run_folder.results_name(120, final=True) == "results.json"
  assert run_folder.results_name(60, final=False) == "results-000000060.json"
  assert run_folder.results_name(60, False, "sr_x2") == "results-000000060-sr_x2.json"
  assert {run_folder.RESULTS_FILE, run_folder.LOG_FILE} <= set(run_folder.ARTIFACTS)


def test_checkpoint_steps_are_every_n_and_the_last():
  assert run_folder.checkpoint_steps(10, 4) == [4, 8, 10]
  assert run_folder.checkpoint_steps(600, 25)[-4:] == [525, 550, 575, 600]
  assert run_folder.checkpoint_steps(5, 250) == [5]


def test_saved_config_reads_back_with_tuples(tmp_path):
  config = tiny.get_config()
  files.write_json(str(tmp_path / run_folder.CONFIG_FILE), config.to_dict())
  back = run_folder.read_config(str(tmp_path))
  assert back.tasks == config.tasks and isinstance(back.tasks, tuple)
  assert back.degrade.rain.length == config.degrade.rain.length  # nested lists -> tuples
  assert back.to_dict() == config.to_dict()


def test_a_resume_takes_a_newer_field_only_at_its_default(tmp_path, capsys):
  """A run saved before a field behaved as its default: resumed with it, fine (and said);
  resumed with another value (a study's fine-tune given data.step_offset), refused."""
  old = tiny.get_config().to_dict()
  del old["data"]["step_offset"]
  files.write_json(str(tmp_path / run_folder.CONFIG_FILE), old)
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)  # a saved step
  config, defaults = tiny.get_config(), run_defaults.config_defaults()  # as the trainer passes
  assert run_folder.check_config(str(tmp_path), config.to_dict(), defaults) is False
  assert "predates the config fields data.step_offset" in capsys.readouterr().out
  config.data.step_offset = 600
  with pytest.raises(ValueError, match=r"holds a run with a different config: data.step_offset "
                                       r"\(absent -> 600\); use a new --workdir"):
    run_folder.check_config(str(tmp_path), config.to_dict(), defaults)


def _saved_run(tmp_path, schedule, total_steps=800, latest=400):
  """A workdir whose run (tiny.py with this lr schedule) saved step `latest`; its config."""
  config = tiny.get_config()
  config.optim.schedule, config.total_steps = schedule, total_steps
  files.write_json(str(tmp_path / run_folder.CONFIG_FILE), config.to_dict())
  (tmp_path / "checkpoints" / str(latest)).mkdir(parents=True)
  return config


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_a_resume_may_not_change_total_steps_that_the_lr_schedule_depends_on(tmp_path, schedule):
  config = _saved_run(tmp_path, schedule)
  # why: the lr of every step after the resume would change (step 400 of 800, or of 1600)
  lrs = [optim.make_optimizer(config.optim, n)[1](400) for n in (800, 1600)]
  assert lrs == pytest.approx({"cosine": [1.670e-3, 2.642e-3], "step": [1.5e-3, 3e-3]}[schedule],
                              abs=1e-6)
  config.total_steps = 1600
  with pytest.raises(ValueError) as error:
    run_folder.check_config(str(tmp_path), config.to_dict(), run_defaults.config_defaults())
  assert str(error.value) == (
      f"total_steps=1600: the run in {tmp_path} has total_steps=800, and its {schedule} lr "
      "schedule depends on it (the lr of every later step would change); resume with "
      "total_steps=800, or use a new --workdir")
  config.total_steps = 800
  assert run_folder.check_config(str(tmp_path), config.to_dict()) is False


def test_a_constant_lr_run_may_change_total_steps_but_not_below_its_saved_step(tmp_path,
                                                                              capsys):
  config = _saved_run(tmp_path, "constant")
  config.total_steps, config.eval_every = 1600, 200
  run_folder.check_or_write_config(str(tmp_path), config.to_dict(),
                                   run_defaults.config_defaults())
  assert capsys.readouterr().out == (
      "resuming with changed fields: eval_every (0 -> 200), total_steps (800 -> 1600); "
      f"{tmp_path}/config.json records them\n")
  saved = run_folder.read_config(str(tmp_path))  # the config in force, as analyze.py reads it
  assert (saved.total_steps, saved.eval_every) == (1600, 200)
  assert saved.to_dict() == config.to_dict()
  config.total_steps = 399
  with pytest.raises(ValueError, match=rf"^total_steps=399 is below step 400, the latest "
                                       rf"checkpoint in {tmp_path}; valid: total_steps >= 400$"):
    run_folder.check_or_write_config(str(tmp_path), config.to_dict())
  assert run_folder.read_config(str(tmp_path)).total_steps == 1600  # nothing written
  config.total_steps = 400  # ends at its saved step: evaluates it
  run_folder.check_or_write_config(str(tmp_path), config.to_dict())
  assert "total_steps (1600 -> 400)" in capsys.readouterr().out


def test_missing_config_and_bad_sources_are_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path} holds no config.json"):
    run_folder.read_config(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    run_folder.source_run(str(tmp_path / "nowhere"))
  files.write_json(str(tmp_path / run_folder.CONFIG_FILE), {"tasks": ["sr_x2"]})
  with pytest.raises(ValueError, match="not a run with a checkpoint"):  # config, no saved step
    run_folder.source_run(str(tmp_path))
  assert run_folder.read_results(str(tmp_path)) is None


@pytest.mark.parametrize("content, shown", [(b'{"tasks": ["sr', "is not a readable JSON file"),
                                            (b"", "is not a readable JSON file"),
                                            (b"\xff\xfe", "is not a readable JSON file"),
                                            (b"[1, 2]", "holds a JSON list, not the dict")])
def test_a_damaged_json_file_is_named(tmp_path, content, shown):
  (tmp_path / run_folder.CONFIG_FILE).write_bytes(content)
  with pytest.raises(ValueError) as error:
    run_folder.read_config(str(tmp_path))
  assert str(error.value).startswith(f"{tmp_path}/config.json {shown}")
  assert "\n" not in str(error.value) and "restore it or move it away" in str(error.value)


def test_state_from_params_is_a_fresh_optimizer_state():
  config = tiny.get_config()
  config.mesh.data = 1
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    fresh = run.init_state()
    state = run_folder.state_from_params(run, fresh.params, step=7)
    assert int(state.step) == 7 and state.mtl_state is None
    for a, b in zip(jax.tree_util.tree_leaves(state.opt_state),
                    jax.tree_util.tree_leaves(run.optimizer.init(fresh.params))):
      np.testing.assert_array_equal(a, b)  # the same init, jitted: exact
    like = run_folder.state_from_params(run, fresh.params, like=fresh)
    assert int(like.step) == 0 and like.params is fresh.params



def test_another_run_s_checkpoints_without_its_config_are_refused(tmp_path):
  config = tiny.get_config().to_dict()
  os.makedirs(tmp_path / "a" / "checkpoints" / "20")  # its config.json lost, or never copied
  with pytest.raises(ValueError) as error:
    run_folder.check_config(str(tmp_path / "a"), config)
  assert str(error.value) == (
      f"--workdir={tmp_path / 'a'} holds saved steps (20 in checkpoints/) but no config.json, "
      "so their config cannot be checked; use a new --workdir, or put back the config.json of "
      "the run that saved them")
  # A save cut short (no saved step) leaves nothing to resume: a fresh start is fine.
  os.makedirs(tmp_path / "b" / "checkpoints" / "2.orbax-checkpoint-tmp-1733540000123456")
  assert run_folder.check_config(str(tmp_path / "b"), config) is False


@pytest.mark.parametrize("names, shown", [(["2", "4"], "2, 4"),
                                          (["6.orbax-checkpoint-tmp-1733540000123456"],
                                           "6.orbax-checkpoint-tmp-1733540000123456"),
                                          ([str(s) for s in range(1, 8)],
                                           "1, 2, 3, 4 and 3 more")])
def test_a_run_s_checkpoints_folder_as_the_workdir_is_refused(tmp_path, names, shown):
  for name in names:
    os.makedirs(tmp_path / "checkpoints" / name)
  files.write_json(str(tmp_path / "config.json"), tiny.get_config().to_dict())
  with pytest.raises(ValueError) as error:
    run_folder.check_or_write_config(str(tmp_path / "checkpoints"), tiny.get_config().to_dict())
  assert str(error.value) == (f"--workdir={tmp_path / 'checkpoints'} holds checkpoint steps "
                              f"({shown}): it looks like a run's checkpoints/ folder; point "
                              "--workdir to its parent")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == sorted(names)  # nothing written


def test_a_run_saved_before_a_field_existed_reads_as_it_behaved(tmp_path):
  # its evaluations averaged tiles and its model took nnx's initialisers: read as today's
  # defaults, analyze --checkpoint failed on the missing field and restore tiled another way
  config = tiny.get_config().to_dict()
  del config["eval"]["tiling"], config["model"]["init"]
  files.write_json(str(tmp_path / "config.json"), config)
  saved = run_folder.read_config(str(tmp_path))
  assert (saved.eval.tiling, saved.model.init) == ("mean", "flax")
  assert saved.eval.tile_overlap == config["eval"]["tile_overlap"]  # the fields it has: kept
  defaults = run_defaults.config_defaults()
  assert (defaults["eval"]["tiling"], defaults["model"]["init"]) == ("mean", "flax")
  assert (tiny.get_config().eval.tiling, tiny.get_config().model.init) == ("centre", "torch")
