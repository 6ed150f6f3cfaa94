"""A run's folder: its file names, its saved config read back as the config files hold it, the
checks on a run to start from, and a state from parameters."""
import jax
import numpy as np
import pytest

from experiments import tiny
from mtl import files, run_defaults, run_folder, run_state


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

