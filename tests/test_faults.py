"""Bad input and faults: every check happens before anything is written, one line each; the
workdir lock; a run that never saved a step may take a new config; exit codes."""
import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import tiny
from mtl import conflicts, files, run_config, run_folder, run_state
from mtl.data import folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  config = tiny.get_config("denoise_30,sr_x2")
  config.mesh.data = 1
  for key, value in overrides.items():
    config[key] = value
  return config


def _set(config, dotted, value):
  node = config
  *path, leaf = dotted.split(".")
  for part in path:
    node = node[part]
  node[leaf] = value
  return config


@pytest.mark.parametrize("field, value, message", [
    ("eval.tile_overlap", 48, r"eval.tile_overlap=48 must be in \[0, model.patch_size=48\)"),
    ("model.patch_size", 6, r"eval.tile_overlap=8 must be in \[0, model.patch_size=6\)"),
    ("optim.lr", -1e-3, r"optim.lr=-0.001 must be > 0"),
    ("optim.lr", 0.0, r"optim.lr=0.0 must be > 0"),
    ("model.num_heads", 0, r"model.num_heads=0 must be >= 1"),
    ("checkpoint_every", 0, r"checkpoint_every=0 must be >= 1"),
    ("log_every", 0, r"log_every=0 must be >= 1"),
    ("data.batch_size", 0, r"data.batch_size=0 must be >= 1"),
    ("conflicts.gramian_chunk", -1, r"conflicts.gramian_chunk=-1 must be >= 0"),
    ("conflicts.every", -1, r"conflicts.every=-1 must be >= 0 \(0: no conflict probes\)"),
    ("optim.warmup_steps", -1, r"optim.warmup_steps=-1 must be >= 0"),
    ("eval.max_side", -5, r"eval.max_side=-5 must be >= 0"),
    ("optim.b2", 1.5, r"optim.b2=1.5 must be in \[0, 1\)"),
    ("optim.final_lr_ratio", -3.0, r"optim.final_lr_ratio=-3.0 must be in \[0, 1\]"),
    ("degrade.rain.density", ("abc", 0.1), r"degrade.rain.density=\('abc', 0.1\) must be \(lo, hi\)"),
    ("degrade.blur.size", 4, r"degrade.blur.size=4 must be an odd kernel side"),
    ("tasks", ("sr_x2", "denoise_30", "sr_x2"), r"listed twice in tasks=\['sr_x2', 'denoise_30', "
                                               r"'sr_x2'\]: 'sr_x2'$"),
    ("tasks", ("sr_x2", ""), r"tasks=\['sr_x2', ''\] holds an empty name"),
    ("eval.sets", "photos,Set5=/no/such/Set5", r"eval.sets: Set5=/no/such/Set5 is not a folder"),
    ("eval.sets", "Set5", r"eval.sets entry 'Set5' is not valid"),
    ("eval.sets", "S=for:sr_x2", r"eval.sets: S has no folder; give S=PATH \(or "
                                 r"S=for:TASKS:PATH, S=paired:PATH\)$"),
    # Existing folders, so only the names are wrong.
    ("eval.sets", f"A={ROOT}/tests,A={ROOT}/mtl", r"eval.sets: the name 'A' is given twice"),
    ("eval.sets", f"photos,photos={ROOT}/tests", r"eval.sets: the name 'photos' is given twice"),
    ("eval.sets", f"={ROOT}/tests", r"eval.sets: =.*/tests has no usable name"),
    ("eval.sets", f"../x={ROOT}/tests", r"eval.sets: \.\./x=.*/tests has no usable name"),
    # A misspelt selector would load the set and score it for no task.
    ("eval.sets", f"S=for:dehazing:paired:{ROOT}/tests", r"eval.sets: S=for:dehazing: 'dehazing' "
                                                         r"is neither a task kind \(denoise, sr"),
    ("eval.sets", f"S=for:denoise+sr_x5:{ROOT}/tests", r"'sr_x5' is neither a task kind"),
    # A folder given without its source would train on the embedded photographs unannounced.
    ("data.folder", "/d/DIV2K", r"data.folder=/d/DIV2K is set, but data.source='photos' does not "
                                r"read it; add --config.data.source=folder"),
    ("data.tfds_name", "div2k", r"data.tfds_name=div2k is set, but data.source='photos' does not "
                                r"read it; add --config.data.source=tfds"),
    ("data.source", "imagenet", r"data.source='imagenet'; valid sources: photos, folder, tfds$"),
    # found when the data loaded: a dry run passed, and a study wrote its runs' folders first
    ("data.source", "folder", r"data.source='folder' needs data.folder=<folder of clean images>"),
    ("data.source", "tfds", r"data.source='tfds' needs data.tfds_name=<prepared TFDS dataset>"),
    ("eval.sets", f"photos,E={ROOT}/tests", r"eval.sets: E=.*/tests: no images directly in test "
                                            r"folder .*/tests; its subfolders: fixtures"),
    ("eval.sets", f"photos,R=paired:{ROOT}/tests", r"eval.sets: R=.*/tests: no degraded/clean "
                                                   r"pairs found in"),
])
def test_validate_names_the_bad_value(field, value, message):
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    run_config.validate(_set(_config(), field, value))


def test_a_bucket_s_folder_is_left_to_the_reader_that_can_open_it():
  # os.path sees no gs://... folder: validate refused what the folder source and the test sets
  # read through etils.epath (no bucket is reached here: nothing of it is read before the build)
  config = _set(_set(_config(), "data.source", "folder"), "data.folder", "gs://bucket/images")
  config = _set(config, "eval.sets", "photos,B=gs://bucket/set5")
  run_config.validate(run_config.normalize(config))
  assert run_config.normalize(config).data.folder == "gs://bucket/images"


def test_a_test_set_inside_a_training_folder_is_refused(tmp_path):
  # data.folder is read recursively: a test set in its subfolder was trained on, silently.
  from PIL import Image
  image = np.zeros((64, 64, 3), np.uint8)
  for sub in ("train", "train/test", "train/.hidden", "held_out", "gopro/seq/blur",
              "gopro/seq/sharp", "rain/rain", "rain/norain", "rain/test"):
    (tmp_path / sub).mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / sub / "a.png")
  (tmp_path / "link").symlink_to(tmp_path / "train" / "test")
  config = _set(_set(_config(), "data.source", "folder"), "data.folder", str(tmp_path / "train"))
  for path in ("train/test", "train", "link"):
    with pytest.raises(ValueError, match=rf"eval.sets: T={tmp_path / path} shares images with "
                                         rf"data.folder={tmp_path / 'train'} \(read recursively\)"):
      run_config.validate(_set(config, "eval.sets", f"photos,T={tmp_path / path}"))
  # a set elsewhere, or in a dot-folder (which the folder source skips), is not trained on
  for path in ("held_out", "train/.hidden"):
    run_config.validate(_set(config, "eval.sets", f"photos,T={tmp_path / path}"))
  # ... unless a link inside the training folder leads to it: the folder source follows links
  (tmp_path / "train" / "more").symlink_to(tmp_path / "held_out")
  with pytest.raises(ValueError, match=rf"T={tmp_path / 'held_out'} shares images with data"):
    run_config.validate(_set(config, "eval.sets", f"photos,T={tmp_path / 'held_out'}"))
  assert any(p.endswith("more/a.png") for p in folder.list_images(tmp_path / "train"))
  (tmp_path / "train" / "more").unlink()
  # a paired folder is read by its layout: GoPro's by its sequences, a rain/norain folder by its
  # two subfolders (a third is not read)
  config = _set(_config(), "data.pairs", f"derain={tmp_path / 'gopro'}")
  for path in ("gopro", "gopro/seq"):
    with pytest.raises(ValueError, match=rf"R={tmp_path / path} shares images with data.pairs "
                                         rf"derain={tmp_path / 'gopro'}"):
      run_config.validate(_set(config, "eval.sets", f"photos,R=paired:{tmp_path / path}"))
  config = _set(_config(), "data.pairs", f"derain={tmp_path / 'gopro' / 'seq'}")
  with pytest.raises(ValueError, match=r"shares images with data.pairs"):
    run_config.validate(_set(config, "eval.sets", f"photos,R=paired:{tmp_path / 'gopro'}"))
  config = _set(_config(), "data.pairs", f"derain={tmp_path / 'rain'}")
  for path in ("rain", "rain/norain"):
    with pytest.raises(ValueError, match=r"shares images with data.pairs derain="):
      run_config.validate(_set(config, "eval.sets", f"photos,R={tmp_path / path}"))
  run_config.validate(_set(config, "eval.sets", f"photos,R={tmp_path / 'rain' / 'test'}"))


def test_a_bfloat16_run_probing_its_training_batch_is_told_what_that_measures(caplog):
  config = _set(_config(), "precision", "bfloat16")
  with caplog.at_level("WARNING"):
    run_config.validate(config)
  assert ("conflicts on the training batch of a bfloat16 run are measured on the bfloat16 "
          "gradients the update takes") in caplog.text
  assert "conflicts.batch_size > 0 measures a probe batch of its own in float32" in caplog.text
  caplog.clear()
  with caplog.at_level("WARNING"):
    run_config.validate(_set(config, "conflicts.batch_size", 8))  # a probe batch: float32
  assert "bfloat16" not in caplog.text


def test_rain_streaks_with_no_task_that_rains_are_said_to_go_unused(caplog):
  # they were ignored without a word
  with caplog.at_level("WARNING"):
    run_config.validate(_set(_config(), "degrade.rain.streak_dir", f"{ROOT}/tests"))
  assert (f"degrade.rain.streak_dir={ROOT}/tests is set, but no task rains (tasks: denoise_30, "
          "sr_x2): it is not used") in caplog.text


def test_missing_folders_and_bad_init_from(tmp_path):
  config = _set(_set(_config(), "data.source", "folder"), "data.folder", str(tmp_path / "none"))
  with pytest.raises(FileNotFoundError, match=r"data.folder=.*none is not a folder"):
    run_config.validate(config)
  (tmp_path / "no_images" / "sub").mkdir(parents=True)
  (tmp_path / "no_images" / "sub" / "notes.txt").write_text("x")
  config.data.folder = str(tmp_path / "no_images")
  with pytest.raises(ValueError, match=r"data.folder=.*no_images holds no images \(looked "
                                       r"recursively for .png, .jpg"):
    run_config.validate(config)  # before TFDS prepares (and logs) a dataset of it
  config = _config(regime="finetune", tasks=("sr_x2",), init_from=str(tmp_path / "none"))
  with pytest.raises(FileNotFoundError, match=r"init_from=.*none is not a folder"):
    run_config.validate(config)
  (tmp_path / "empty").mkdir()
  config.init_from = str(tmp_path / "empty")
  with pytest.raises(ValueError, match=r"init_from=.*empty is not a run with a checkpoint"):
    run_config.validate(config)


def test_workdir_that_is_a_file_or_read_only(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(ValueError, match=r"--workdir=.*file is a file"):
    run_state.prepare(_config(), str(tmp_path / "file"))
  with pytest.raises(ValueError, match=r"--workdir=.*file/run is a file|not writable"):
    run_state.check_workdir(str(tmp_path / "file" / "run"))


def test_a_run_folder_of_the_wrong_kind_or_with_results_but_no_checkpoint_is_refused(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "checkpoints").write_text("x")  # orbax's saves would fail, and hang at exit
  with pytest.raises(ValueError, match=r"a/checkpoints is not a folder, as a run's checkpoints"):
    run_state.prepare(_config(), str(tmp_path / "a"))
  # Results only saved steps write, with no checkpoint left to resume: a start would replace them.
  conflicts.append(str(tmp_path / "b"), np.arange(2), np.ones((2, 1, 4, 4), np.float32),
                   ["pos_embed"], ["denoise_30", "sr_x2"])
  (tmp_path / "b" / "results.json").write_text("{}")
  before = sorted(str(p) for p in (tmp_path / "b").rglob("*"))
  with pytest.raises(ValueError, match=r"holds an earlier run's results \(results.json, "
                                       r"conflicts/store/ chunks\) but no checkpoint"):
    run_state.prepare(_config(), str(tmp_path / "b"))
  assert sorted(str(p) for p in (tmp_path / "b").rglob("*")) == before
  run_state.prepare(_config(), str(tmp_path / "c"))  # a new folder is fine
  (tmp_path / "photos").mkdir()  # a user's folder of images: a run's files would mix with them
  (tmp_path / "photos" / "cat.png").write_bytes(b"")
  with pytest.raises(ValueError, match=r"--workdir=.*photos holds images \(cat.png\): a run's "
                                       r"files would go among them"):
    run_state.prepare(_config(), str(tmp_path / "photos"))


def test_a_start_killed_in_its_first_save_is_started_again_with_the_same_store(tmp_path):
  """The probes before the first save are flushed just before it; a kill during that save left
  their chunk and no checkpoint, and every rerun was refused. The run's own such chunk is
  measured again (the same Gramians); a chunk past the first save is another run's, refused."""
  import shutil
  from mtl import train
  config = _config(total_steps=8, checkpoint_every=4, log_every=4)
  config.data.batch_size = 2
  config.eval.update(max_side=48, max_images=1)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(config, straight)
  chunks = sorted(os.listdir(conflicts.store_dir(straight)))
  assert "chunk-000000000-000000003.npz" in chunks  # the flush before the save at step 4
  killed = tmp_path / "killed"
  os.makedirs(conflicts.store_dir(str(killed)))
  shutil.copy(os.path.join(straight, run_folder.CONFIG_FILE), killed)
  for name in ("meta.json", "chunk-000000000-000000003.npz"):
    shutil.copy(os.path.join(conflicts.store_dir(straight), name), conflicts.store_dir(str(killed)))
  later = tmp_path / "later"
  shutil.copytree(killed, later)
  train.train_and_evaluate(config, str(killed))
  a, b = conflicts.load(straight), conflicts.load(str(killed))
  np.testing.assert_array_equal(a.steps, b.steps)
  np.testing.assert_array_equal(a.gramians, b.gramians)
  last = [c for c in chunks if c.startswith("chunk-") and c != "chunk-000000000-000000003.npz"]
  shutil.copy(os.path.join(conflicts.store_dir(straight), last[0]), conflicts.store_dir(str(later)))
  with pytest.raises(ValueError, match=r"holds an earlier run's results \(conflicts/store/ "
                                       r"chunks\) but no checkpoint"):
    run_state.prepare(config, str(later))


def test_single_task_runs_say_nothing_about_conflicts(caplog):
  with caplog.at_level(logging.WARNING):
    assert run_config.probe_plan(_config(tasks=("sr_x2",))).probe_every == 0
    run_config.validate(_config(tasks=("sr_x2",)))
    assert run_config.probe_plan(_config(tasks=("sr_x2",), regime="scratch")).probe_every == 0
  assert not [r for r in caplog.records if "conflicts" in r.getMessage()]
  assert run_config.probe_plan(_config()).probe_every == _config().conflicts.every


def test_a_run_that_never_saved_a_step_takes_a_new_config(tmp_path):
  workdir = str(tmp_path)
  run_folder.check_or_write_config(workdir, _config().to_dict())
  changed = _config(tasks=("sr_x2", "derain")).to_dict()
  assert run_folder.check_config(workdir, changed) is True  # no step saved: replaceable
  run_folder.check_or_write_config(workdir, changed)
  assert files.read_json(os.path.join(workdir, "config.json"))["tasks"] == ["sr_x2", "derain"]
  os.makedirs(os.path.join(workdir, "checkpoints", "2"))  # a saved step: now it is refused
  with pytest.raises(ValueError, match=r"holds a run with a different config: tasks"):
    run_folder.check_config(workdir, _config().to_dict())


def test_a_changed_config_names_every_change():
  saved = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6}
  current = {"a": 0, "b": 0, "c": 0, "d": 0, "e": 0, "g": 0}
  with pytest.raises(ValueError) as error:
    files.refuse_changes("w", saved, current)
  assert str(error.value) == ("w holds a different config: a (1 -> 0), b (2 -> 0), c (3 -> 0), "
                              "d (4 -> 0) and 2 more (e, f)")  # g: added to mtl since, not refused


def test_a_config_written_before_a_field_existed_resumes_and_says_so(tmp_path, capsys):
  workdir = str(tmp_path)
  older = _config().to_dict()
  del older["mtl"], older["model"]["init"]  # fields added to mtl after this run started
  files.write_json(os.path.join(workdir, "config.json"), older)
  os.makedirs(os.path.join(workdir, "checkpoints", "2"))
  assert run_folder.check_config(workdir, _config().to_dict()) is False  # resumable
  out = capsys.readouterr().out
  assert "predates the config fields model.init, mtl.affinity_every" in out, out
  assert "more: resuming with their current values" in out
  saved = files.read_json(os.path.join(workdir, "config.json"))
  assert saved == json.loads(json.dumps(older))  # left as it was
  changed = _config(seed=7).to_dict()  # a field it has, changed: still refused
  with pytest.raises(ValueError, match=r"different config: seed \(0 -> 7\)"):
    run_folder.check_config(workdir, changed)


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_workdir_lock(tmp_path):
  lock = files.WorkdirLock(str(tmp_path), run_folder.LOCK_FILE)
  host = socket.gethostname()
  (tmp_path / "train.lock").write_text(json.dumps({"pid": os.getppid(), "host": host,
                                                   "started": "then"}))
  with pytest.raises(files.LockHeld, match=rf"in use by pid {os.getppid()} since then"):
    lock.acquire()
  (tmp_path / "train.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere",
                                                   "started": "then"}))
  with pytest.raises(files.LockHeld, match=r"in use by pid 1 on elsewhere"):  # pid not checkable
    lock.acquire()
  dead = _dead_pid()
  (tmp_path / "train.lock").write_text(json.dumps({"pid": dead, "host": host, "started": "x"}))
  with lock:  # a stale lock of a dead process does not block
    assert lock.stale["pid"] == dead
    assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
  assert not (tmp_path / "train.lock").exists()


def _take_lock(workdir, start, results):
  start.wait()
  lock = files.WorkdirLock(workdir, run_folder.LOCK_FILE)
  try:
    lock.acquire()
  except files.LockHeld:
    results.put(None)
    return
  held = time.monotonic()
  time.sleep(0.05)  # training
  results.put((held, time.monotonic(), lock.holder()["pid"] == os.getpid()))
  lock.release()


def test_of_two_trainers_replacing_one_stale_lock_only_one_takes_it(tmp_path):
  # Each saw the dead holder; a later one's removal must not take an earlier one's new lock
  # (unguarded, two trained at once within the first few trials here).
  import multiprocessing
  context = multiprocessing.get_context("fork")
  dead = _dead_pid()
  for trial in range(30):
    workdir = tmp_path / str(trial)
    workdir.mkdir()
    (workdir / "train.lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname(),
                                                    "started": "x"}))
    start, results = context.Barrier(4), context.Queue()
    procs = [context.Process(target=_take_lock, args=(str(workdir), start, results))
             for _ in range(4)]
    for proc in procs:
      proc.start()
    for proc in procs:
      proc.join(timeout=60)
    held = [r for r in (results.get(timeout=10) for _ in procs) if r is not None]
    assert held and all(named for _, _, named in held), (trial, held)  # each its own lock
    held.sort()  # one after the other (a later one may find the lock gone), never two at once
    assert all(a[1] < b[0] for a, b in zip(held, held[1:])), (trial, held)


@pytest.mark.parametrize("content, shown", [
    (b"\x93garbage\x00", r"it holds b'\\x93garbage\\x00'"), (b"", "empty"),
    (b"[1, 2]", r"it holds b'\[1, 2\]'"), (b'{"pid": -1}', "it holds"),
    (b'{"pid": 1000000000000000000000000000000}', "it holds"),  # past os.kill's C int
    (b"[" * 100_000 + b"]" * 100_000, r"it holds b'\[\[\["),  # json's RecursionError
])
def test_an_unreadable_lock_is_named_with_how_to_clear_it(tmp_path, content, shown):
  (tmp_path / "train.lock").write_bytes(content)
  with pytest.raises(files.LockHeld) as error:
    files.WorkdirLock(str(tmp_path), run_folder.LOCK_FILE).acquire()
  message = str(error.value)
  assert re.search(rf"train.lock is not a lock a trainer wrote \({shown}", message), message
  assert "delete that file and run again" in message and "pid -1" not in message
  assert (tmp_path / "train.lock").read_bytes() == content  # not ours to remove


def test_a_second_trainer_refuses_while_the_first_holds_the_workdir(tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  try:
    (workdir / "train.lock").write_text(json.dumps(
        {"pid": holder.pid, "host": socket.gethostname(), "started": "now"}))
    out = subprocess.run(
        [sys.executable, "launch/train.py", "--config=experiments/tiny.py:sr_x2",
         f"--workdir={workdir}", "--config.mesh.data=1", "--config.eval.max_images=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
  finally:
    holder.kill()
    holder.wait()
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
      f"error: workdir {workdir} is in use by pid {holder.pid} since now "
      f"({workdir}/train.lock); wait for it to end, or delete that file if the process is gone")
  assert sorted(os.listdir(workdir)) == ["train.lock"]  # no config.json, no log


@pytest.mark.parametrize("sets", ["", " , "])
def test_an_empty_eval_sets_is_refused_naming_the_valid_entries(sets):
  # Else each evaluation prints empty tables and writes results.json with no task scored.
  with pytest.raises(ValueError) as error:
    run_config.validate(_set(_config(), "eval.sets", sets))
  assert str(error.value) == (
      f"eval.sets={sets!r} names no test set; give one or more, comma-separated: photos, "
      "photos_val, folder_val (held out of data.folder), NAME=PATH (clean HR folder), "
      "NAME=paired:PATH (degraded/clean pairs) or "
      "NAME=for:TASKS:... (only for TASKS)")


def _trainer(workdir, **fields):
  """launch/train.py on a tiny two-task run in `workdir` (no conflict probes: one step kind)."""
  fields = {"mesh.data": 1, "data.batch_size": 2, "total_steps": 1000,
            "checkpoint_every": 1000, "log_every": 1, "conflicts.every": 0,
            "eval.max_images": 1, "eval.max_side": 48, **fields}
  return [sys.executable, "launch/train.py",
          "--config=experiments/tiny.py:tasks=denoise_30+sr_x2", f"--workdir={workdir}"] + [
              f"--config.{k}={v}" for k, v in fields.items()]


def _stopped(proc, signum, workdir):
  """(train.log, latest saved step) of a trainer sent `signum` after its output was cut off,
  once it exited 75 (preempted) with a checkpoint of step 2 or later and no traceback."""
  from mtl import checkpoints
  try:
    proc.send_signal(signum)
    rc = proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  log = (workdir / "train.log").read_text()
  assert rc == run_folder.PREEMPTED_EXIT, log[-3000:]
  assert "Traceback" not in log, log[-3000:]
  saved = checkpoints.latest_saved_step(str(workdir))
  assert saved is not None and saved >= 2, log[-3000:]
  return log, saved


def test_sigterm_after_the_reader_of_the_output_is_gone_checkpoints_and_exits_75(tmp_path):
  """As when the parent pumping a trainer's output dies: the pipe is closed, then SIGTERM. The
  handler's line raised BrokenPipeError before it asked to stop (exit 1, no checkpoint); now the
  trainer saves a checkpoint, goes on writing its train.log and exits 75."""
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_trainer(workdir), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
  for line in proc.stdout:
    if line.startswith(b"step 2/"):
      break
  proc.stdout.close()  # nothing reads its output any more
  log, saved = _stopped(proc, signal.SIGTERM, workdir)
  assert "BrokenPipe" not in log, log[-3000:]
  tail = log[log.index("SIGTERM received"):].splitlines()
  assert tail[0] == "SIGTERM received: saving a checkpoint at the next step and stopping"
  assert ("(the reader of this process's stdout is gone: from here on its output goes to this "
          "log only)") in tail
  assert tail[-1] == (f"preempted: checkpoint saved at step {saved} in {workdir}; run the same "
                      "command to resume")


def test_a_closed_terminal_checkpoints_and_exits_75_and_nohup_keeps_training(tmp_path):
  """A trainer on a terminal (a pty) that closes: SIGHUP, and writes to the terminal fail with
  EIO. It killed the run where it stood; now it saves a checkpoint, its train.log goes on, and it
  exits 75. Started under nohup (SIGHUP ignored), a SIGHUP changes nothing."""
  import pty
  from mtl import checkpoints
  workdir = tmp_path / "run"
  master, terminal = pty.openpty()
  proc = subprocess.Popen(_trainer(workdir), cwd=ROOT, stdout=terminal, stderr=terminal,
                          stdin=subprocess.DEVNULL)
  os.close(terminal)
  seen = b""
  while b"step 2/" not in seen:
    seen += os.read(master, 4096)
  os.close(master)  # the terminal goes away: its writes fail with EIO
  log, saved = _stopped(proc, signal.SIGHUP, workdir)
  assert "SIGHUP received: saving a checkpoint at the next step and stopping" in log
  assert log.rstrip().endswith(f"preempted: checkpoint saved at step {saved} in {workdir}; run "
                               "the same command to resume")
  # under nohup: a run goes on to its last step
  ignored = lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)
  other = tmp_path / "nohup"
  proc = subprocess.Popen(_trainer(other, total_steps=6, checkpoint_every=6), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=ignored)
  for line in proc.stdout:
    if line.startswith(b"step 2/"):
      proc.send_signal(signal.SIGHUP)
      break
  out = proc.stdout.read().decode()
  assert proc.wait(timeout=300) == 0, out[-3000:]
  assert checkpoints.latest_saved_step(str(other)) == 6 and "SIGHUP" not in out


def test_a_sigterm_as_the_conflict_figures_are_drawn_lets_them_finish(tmp_path):
  """The figures are drawn after the final evaluation: a SIGTERM there (a job's time limit) hit
  the default handler (exit -15, no figures, no answer), and the rerun only said 'already
  finished'. Now the stop waits for them, as it does for the evaluation."""
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_trainer(workdir, total_steps=4, checkpoint_every=4,
                                   **{"conflicts.every": 1}),
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  out = b""
  for line in proc.stdout:
    out += line
    if line.startswith(b"covers: "):  # the evaluation's last line: the drawing comes next
      proc.send_signal(signal.SIGTERM)
      break
  out = (out + proc.stdout.read()).decode()
  assert proc.wait(timeout=300) == 0, out[-3000:]
  assert "SIGTERM received: the final evaluation and the conflict figures finish first" in out
  assert (workdir / "conflicts" / "cos_matrix.png").is_file() and "figures: " in out


def _tmpfs(mount, size):
  """`mount` as a new tmpfs of `size` (root only; the test is skipped elsewhere)."""
  mount.mkdir()
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
  except OSError:  # no mount command
    mounted = False
  if not mounted:
    pytest.skip("needs a tmpfs (mount -t tmpfs: root)")
  return mount


def _fill(file, size):
  """Write `size` bytes to `file` until its disk is full."""
  try:
    while True:
      file.write(b"\0" * size)
  except OSError as error:
    assert error.errno == errno.ENOSPC


def test_a_lock_that_cannot_be_written_is_not_left_behind_empty(tmp_path):
  # it was: "free space and run the same command" then met an empty lock it would not clear
  mount = _tmpfs(tmp_path / "full", "1m")
  try:
    with open(mount / "filler", "wb", buffering=0) as filler:
      for size in (1 << 16, 1 << 12, 1):
        _fill(filler, size)
    with pytest.raises(OSError) as error:
      files.WorkdirLock(str(mount), run_folder.LOCK_FILE).acquire()
    assert error.value.errno == errno.ENOSPC
    assert not (mount / run_folder.LOCK_FILE).exists()
  finally:
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_a_disk_that_fills_during_training_stops_the_run_with_one_line(tmp_path):
  """A real full disk (a tmpfs filled at step 3; root only): the run stops with its one
  `error:` line; tensorboard's write thread printed ~15 lines of traceback before it (here on
  step 4's evaluation image, larger than what a file's last page has left)."""
  mount = _tmpfs(tmp_path / "small", "24m")
  try:
    workdir = mount / "run"
    proc = subprocess.Popen(_trainer(workdir, total_steps=200, checkpoint_every=100,
                                     eval_every=4), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    for line in proc.stdout:
      out.append(line)
      if line.startswith("step 3/"):
        with open(mount / "filler", "wb", buffering=0) as filler:  # every page left
          for size in (1 << 16, 1 << 12):
            _fill(filler, size)
    err = proc.stderr.read()
    rc = proc.wait(timeout=300)
  finally:
    subprocess.run(["umount", "--lazy", str(mount)], check=False)
  text = "".join(out) + err
  assert rc == 1, text[-3000:]
  assert "Traceback" not in text and "Exception in thread" not in text, text[-3000:]
  assert err.strip().splitlines()[-1] == (
      f"error: no space left on the device of {workdir}: training stopped; no checkpoint was "
      "saved before it. Free space and run the same command to resume")
