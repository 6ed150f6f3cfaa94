"""The progress line: rate over a window (compilation falls out), ETA, cadence."""
import numpy as np
import pytest

from mtl import files
from mtl import progress as progress_lib


def test_progress_rate_eta_and_cadence():
  now = [100.0]
  progress = progress_lib.Progress(total_steps=1000, start_step=200, every=50, window=3,
                                  clock=lambda: now[0])
  assert np.isnan(progress.rate())
  now[0] = 130.0  # the first stretch includes compilation: 25 steps in 30 s
  assert progress.update(225) is None  # fewer than `every` steps since the last line
  now[0] = 135.0
  line = progress.update(250, {"loss/total": 0.012345})
  assert line == "step 250/1000 (25.0%) | 1.43 steps/s | ETA 8m45s | loss/total 0.01235"
  for step in (300, 350, 400):  # 50 steps every 10 s: the slow start leaves the window
    now[0] += 10.0
    line = progress.update(step)
  assert progress.rate() == pytest.approx(5.0)
  assert progress.eta() == pytest.approx(120.0)
  assert line == "step 400/1000 (40.0%) | 5 steps/s | ETA 2m00s"
  now[0] += 1.0
  assert progress.update(1000) is not None  # the last step always logs
  assert files.format_duration(3 * 3600 + 125) == "3h02m"
  assert files.format_duration(float("nan")) == "?"


def test_uneven_work_logs_by_the_clock_in_its_own_unit():
  # an evaluation or a restore: items of any duration, a line at most every 10 s, and the last
  now = [0.0]
  progress = progress_lib.Progress(10, every_seconds=10, unit="image", clock=lambda: now[0])
  lines = []
  for image, seconds in enumerate((4, 4, 4, 1, 30, 2, 2, 2, 2, 2), 1):
    now[0] += seconds
    lines.append(progress.update(image))
  assert [k for k, line in enumerate(lines, 1) if line] == [3, 5, 10]
  assert lines[2] == "image 3/10 (30.0%) | 0.25 images/s | ETA 28s"
  assert lines[9].startswith("image 10/10 (100.0%) | ")


def test_compilation_is_excluded_from_the_rate():
  """The issue's case: 20 s compile, 0.4 s/step, log_every 25: the first ETA is already right."""
  now = [0.0]
  progress = progress_lib.Progress(total_steps=800, start_step=0, every=25,
                                  clock=lambda: now[0])
  now[0] += 20.0 + 0.4  # the first call: compilation, then its step
  progress.exclude(20.0)
  progress.update(1)
  for step in range(2, 26):
    now[0] += 0.4
    line = progress.update(step)
  assert progress.rate() == pytest.approx(2.5)
  assert line == "step 25/800 (3.1%) | 2.5 steps/s | ETA 5m10s"  # 775 steps x 0.4 s


def test_tee_keeps_output_until_attached_then_appends(tmp_path, capsys):
  path = tmp_path / "train.log"
  path.write_text("earlier attempt\n")
  with progress_lib.Tee(argv=["launch/train.py", "--workdir=w"]) as tee:
    print("before the workdir was checked")
    assert path.read_text() == "earlier attempt\n"  # nothing written before attach
    progress_lib.attach_log(str(path))
    print("after")
    import sys
    print("an error line", file=sys.stderr)
  lines = path.read_text().splitlines()
  assert lines[0] == "earlier attempt"
  assert lines[1].startswith(f"=== {tee.started} | pid ") and lines[1].endswith(
      "launch/train.py --workdir=w")
  assert lines[2:] == ["before the workdir was checked", "after", "an error line"]
  assert progress_lib.Tee.current is None
  assert "after" in capsys.readouterr().out  # the terminal still gets everything


def test_a_remedy_run_says_its_config_mtl_in_the_banner_and_hparams(tmp_path):
  from experiments import tiny
  from mtl import events, run_state
  config = tiny.get_config("denoise_30,sr_x2")
  config.mesh.data = 1
  plain_banner = run_state.prepare(config, str(tmp_path / "plain")).banner()
  assert "update" not in plain_banner and "loss weighting" not in plain_banner
  config.mtl.aggregator = "cagrad"
  config.mtl.aggregator_args.c = 0.4
  config.mtl.affinity_every = 10
  banner = run_state.prepare(config, str(tmp_path / "remedy")).banner()
  assert ("| update cagrad(c=0.4), loss weighting none, TAG affinity every 10 steps |"
          in banner), banner
  logdir = str(tmp_path / "events")
  with events.Writer(logdir) as writer:
    writer.hparams(progress_lib.hparams_of(config), trial_id="remedy")
  hparams = events.read_hparams(logdir)
  assert (hparams["aggregator"], hparams["loss_weighting"], hparams["affinity"]) == (
      "cagrad(c=0.4)", "none", "every 10 steps")
  config.mtl.aggregator, config.mtl.loss_weighting = "sum", "uncertainty"  # one kind a run
  config.mtl.aggregator_args = {"per_leaf": False}
  banner = run_state.prepare(config, str(tmp_path / "weighted")).banner()
  assert "| update sum, loss weighting uncertainty, TAG affinity every 10 steps |" in banner


def test_a_one_task_run_shows_no_tag_affinity_it_would_not_measure(tmp_path):
  from experiments import tiny
  from mtl import run_state
  config = tiny.get_config("denoise_30")
  config.regime, config.mesh.data = "scratch", 1
  config.mtl.affinity_every = 10  # TAG needs two tasks: the trainer measures nothing here
  banner = run_state.prepare(config, str(tmp_path / "tag")).banner()
  assert "TAG" not in banner and "update" not in banner, banner  # a plain run's banner
  config.mtl.aggregator = "mean"
  banner = run_state.prepare(config, str(tmp_path / "mean")).banner()
  assert "| update mean, loss weighting none |" in banner, banner
  assert "affinity" not in progress_lib.hparams_of(config)
def test_data_wait_share_between_updates():
  now = [0.0]
  progress = progress_lib.Progress(total_steps=100, start_step=0, every=10, clock=lambda: now[0])
  now[0] = 4.0
  line = progress.update(10, data_wait=1.0)  # 1 s of the first 4 s waiting for batches
  assert progress.wait_share() == pytest.approx(0.25)
  assert line == "step 10/100 (10.0%) | 2.5 steps/s | ETA 36s | data wait 25%"
  now[0] = 10.0
  progress.exclude(2.0)  # a compile: neither training nor waiting
  progress.update(20, data_wait=1.2)  # 0.2 s of the 4 s of steps since
  assert progress.wait_share() == pytest.approx(0.05)
  assert "data wait" not in progress.update(30)  # a loop that does not measure it


def test_a_resume_drops_the_steps_it_retrains_and_a_torn_line_only(tmp_path, caplog):
  """metrics.jsonl is the run's record: on a resume from step 4 the records past it go (they
  are logged again) and so does a torn last line; a line that is not a record stays, said."""
  path = tmp_path / "metrics.jsonl"
  lines = ['{"step": 2, "loss": 1}\n', '{"step": 2, oops\n', '{"step": "3"}\n',
           "[" * 200_000 + "\n",  # past the JSON parser's recursion limit: was a RecursionError
           '{"step": 4, "loss": 0.5}\n', '{"step": 6, "loss": 0.4}\n', '{"step": 8, "lo']
  path.write_text("".join(lines))
  with caplog.at_level("WARNING"):
    log = progress_lib.MetricsLog(str(path), start=4)
  log.write({"step": 6, "loss": 0.3})
  log.close()
  assert path.read_text().splitlines() == [
      '{"step": 2, "loss": 1}', '{"step": 2, oops', '{"step": "3"}', "[" * 200_000,
      '{"step": 4, "loss": 0.5}', '{"loss": 0.3, "step": 6}']
  assert "kept 3 line(s) that are not metrics records, as they are (line 2, 3, 4)" in caplog.text


def test_a_resumed_run_logs_at_every_multiple_of_log_every():
  """Resumed at 7 with log_every=5 (a stop's checkpoint): lines at 10, 15 and 20 (the loop
  calls update at those steps and at its checkpoints), not counted from 7 (14 and 20)."""
  now = [0.0]
  progress = progress_lib.Progress(total_steps=20, start_step=7, every=5, clock=lambda: now[0])
  logged = []
  for step in (8, 10, 12, 14, 15, 16, 20):  # the loop's calls: multiples and checkpoints
    now[0] += 1.0
    if progress.update(step) is not None:
      logged.append(step)
  assert logged == [10, 15, 20]


def test_an_evaluation_is_left_out_of_the_rate_eta_and_data_wait():
  """The loop excludes an evaluation's seconds as a compile's: 0.5 s/step before and after a
  10 s evaluation is 2 steps/s, and the data wait's share is of the steps' time."""
  now = [0.0]
  progress = progress_lib.Progress(total_steps=100, start_step=0, every=10, clock=lambda: now[0])
  now[0] = 5.0
  progress.update(10, data_wait=0.5)
  now[0] += 10.0  # the evaluation at step 10
  progress.exclude(10.0)
  now[0] += 5.0
  line = progress.update(20, data_wait=1.0)
  assert progress.rate() == pytest.approx(2.0) and progress.wait_share() == pytest.approx(0.1)
  assert line == "step 20/100 (20.0%) | 2 steps/s | ETA 40s | data wait 10%"


def _closed_pipe():
  """A text stream whose pipe has no reader (its parent died): writes fail with EPIPE."""
  import os
  read, write = os.pipe()
  os.close(read)
  return os.fdopen(write, "w", buffering=1)


def test_the_log_goes_on_when_the_reader_of_the_output_is_gone(tmp_path, monkeypatch):
  """A trainer whose parent died (the pipe it wrote to has no reader): print goes on, to the
  log only, from the line that failed on; the stream's descriptor is pointed at /dev/null."""
  import os
  import sys
  pipe = _closed_pipe()
  with pytest.raises(BrokenPipeError):  # what print raised in the trainer
    print("x", file=pipe, flush=True)
  pipe = _closed_pipe()
  monkeypatch.setattr(sys, "stdout", pipe)
  path = tmp_path / "train.log"
  with progress_lib.Tee(argv=["launch/train.py"]):
    progress_lib.attach_log(str(path))
    print("SIGTERM received: saving a checkpoint", flush=True)
    print("preempted: checkpoint saved", flush=True)
    assert os.path.samestat(os.fstat(pipe.fileno()), os.stat(os.devnull))
  pipe.flush()  # what it still held: to /dev/null (the interpreter's flush at exit)
  lines = path.read_text().splitlines()[1:]
  assert lines == ["SIGTERM received: saving a checkpoint",
                   "(the reader of this process's output is gone: from here on its output "
                   "goes to this log only)",
                   "preempted: checkpoint saved"]


def test_a_study_run_takes_its_log_over_when_the_runner_that_wrote_it_is_gone(tmp_path,
                                                                              monkeypatch):
  """A study's run does not write its train.log (MTL_TRAIN_LOG=0: the runner writes it from the
  run's output); where the runner dies, the run's last words (its SIGTERM, its checkpoint) went
  nowhere: it takes the log over, from its last lines, and keeps no more than those before."""
  import os
  import sys
  monkeypatch.setenv("MTL_TRAIN_LOG", "0")
  path = tmp_path / "train.log"
  path.write_text("step 10/40 (the runner's copy)\n")
  pipe = _closed_pipe()
  with progress_lib.Tee(argv=["launch/train.py"]) as tee:
    monkeypatch.setattr(sys, "stdout", progress_lib._Stream(pipe, tee))
    progress_lib.attach_log(str(path))
    for step in range(1, 101):
      tee.write(f"step {step}/100\n")  # as the pipe had them: the runner logged them
    assert len(tee._buffer) == progress_lib.STANDBY_WRITES  # the last lines only
    assert path.read_text() == "step 10/40 (the runner's copy)\n"
    print("SIGTERM received: saving a checkpoint", flush=True)  # the runner is gone
    print("preempted: checkpoint saved at step 13", flush=True)
  lines = path.read_text().splitlines()
  assert lines[0] == "step 10/40 (the runner's copy)"
  assert lines[1].endswith(f"| pid {os.getpid()}: the process that wrote this log is gone; this "
                           "run writes it from here, from its last lines (some logged above "
                           "already):")
  # the last STANDBY_WRITES writes: 38 steps, then the SIGTERM line's text and newline (its
  # write to the pipe failed at the flush)
  assert lines[2:] == [f"step {s}/100" for s in range(63, 101)] + [
      "SIGTERM received: saving a checkpoint",
      "(the reader of this process's output is gone: from here on its output goes to this log "
      "only)", "preempted: checkpoint saved at step 13"]


def test_a_log_the_disk_cannot_hold_is_given_up_and_said_on_the_terminal(tmp_path, capsys):
  import os
  if not os.path.exists("/dev/full"):
    pytest.skip("needs /dev/full")
  path = tmp_path / "train.log"
  path.symlink_to("/dev/full")  # every write: ENOSPC
  with progress_lib.Tee(argv=["launch/train.py"]):
    print("step 8/40", flush=True)
    progress_lib.attach_log(str(path))
    print("error: no space left on the device", flush=True)
  out, err = capsys.readouterr()
  assert out == "step 8/40\nerror: no space left on the device\n"
  assert err == (f"\nwarning: {path} cannot be written (No space left on device): the output "
                 "goes on to the terminal only\n")


def test_the_banner_says_when_the_warm_up_outlasts_the_run(tmp_path):
  from experiments import tiny
  from mtl import run_state
  config = tiny.get_config("denoise_30")
  config.regime, config.mesh.data = "scratch", 1
  config.optim.lr, config.optim.warmup_steps = 1e-3, 50
  config.total_steps = 50  # steps 0..49: the linear ramp's last value is 49/50 of the peak
  banner = run_state.prepare(config, str(tmp_path / "short")).banner()
  assert "lr 0.001 (its 50-step warm-up outlasts the run: lr peaks at 0.00098) |" in banner, banner
  config.total_steps = 51  # step 50 reaches the peak: nothing to say
  banner = run_state.prepare(config, str(tmp_path / "long")).banner()
  assert "lr 0.001 | " in banner and "warm-up" not in banner, banner
