"""End to end on the embedded photographs: joint run, resume, fine-tune, refusals, NaN stop."""
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from experiments import tiny
from mtl import checkpoints, conflicts, events, files, flops, measure, train
from mtl import progress as progress_lib
from mtl import run_config, run_folder, run_state, sharding
from mtl import step as step_lib
from mtl.data import pipeline, sources
from mtl.models import ipt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read_metrics(workdir):
  """The records of <workdir>/metrics.jsonl, in order."""
  with open(os.path.join(workdir, run_folder.METRICS_FILE)) as f:
    return [json.loads(line) for line in f if line.strip()]


def _config(**overrides):
  config = tiny.get_config()
  config.tasks = ("denoise_30", "sr_x2")
  config.data.batch_size = 2
  config.mesh.data = 1
  config.total_steps = 4
  config.checkpoint_every = 2
  config.log_every = 2
  config.optim.schedule = "constant"  # a resumed run and a straight one share the schedule
  config.optim.warmup_steps = 0
  config.eval.max_side = 48
  config.eval.max_images = 1
  config.eval.tile_overlap = 0
  config.conflicts.every, config.conflicts.batch_size = 1, 0  # every step, the training halves
  for key, value in overrides.items():
    config[key] = value
  return config


def _params(workdir, config):
  run = run_state.build(config)
  params, step = checkpoints.restore_params(os.path.join(workdir, "checkpoints"),
                                            run.abstract_state.params)
  return jax.device_get(params), step


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight"))
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    results = train.train_and_evaluate(_config(), workdir)
  print(out.getvalue())
  with open(workdir + ".stdout", "w") as f:  # beside the workdir: its contents stay the run's
    f.write(out.getvalue())
  return workdir, results


def test_joint_run_writes_every_artifact(straight_run):
  workdir, results = straight_run
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))
  assert saved["step"] == 4 and set(saved["tasks"]) == {"denoise_30", "sr_x2"}
  entry = saved["tasks"]["sr_x2"]["photos"]
  assert {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "input_psnr_y"} <= set(entry)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  record = conflicts.load(workdir)
  assert list(record.steps) == [0, 1, 2, 3] and list(record.task_names) == ["denoise_30", "sr_x2"]
  assert os.path.exists(os.path.join(workdir, "conflicts", "cos_matrix.png"))
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "events")))
  compute = json.load(open(os.path.join(workdir, "compute.json")))
  assert compute["steps"] == 4 and compute["images_seen"] == 4 * 2 * 2
  # The model's FLOPs, from its shapes: both tasks' steps (batch 2 each), forward + backward.
  model = ipt.ModelConfig.from_config(_config().model)
  assert compute["flops_counted_by"] == "model" and compute["flops_per_step"] == flops.train_step(
      model, [1, 2], 2) and compute["train_flops"] == 4 * compute["flops_per_step"]
  # The share of wall time the loop waited for batches: TensorBoard and metrics.jsonl, per line.
  steps, waits = events.read_scalars(os.path.join(workdir, "events"), "train/data_wait")
  assert list(steps) == [2, 4] and all(0 <= w <= 1 for w in waits)
  assert [r["data_wait"] for r in _read_metrics(workdir)] == pytest.approx(list(waits))
  # The banner says what the run trains on.
  banner = next(line for line in open(workdir + ".stdout") if line.startswith("run: "))
  count = len(sources.open_images(_config().data, "train"))
  assert f"| data photos [train], {count} images | conflicts on" in banner, banner


def test_the_run_ends_with_its_conflict_verdicts_and_where_to_read_more(straight_run):
  workdir, _ = straight_run
  with open(workdir + ".stdout") as f:
    lines = f.read().splitlines()
  start = lines.index("task conflict: noise-corrected whole-body gradient cosine [95% interval], "
                      "steps 0-3 (4 probes, training batches of 2/task):")
  assert any("Y-channel PSNR" in line for line in lines[:start])  # after the PSNR table
  # The table says what it covers: one photograph (eval.max_images=1), a 48 px centre crop.
  assert ("covers: photos 1 image (photographs' test split); centre-cropped to at most 48 px "
          "(eval.max_side); the first 1 per set") in lines[:start]
  record = conflicts.load(workdir)
  iv = record.corrected_cosine_intervals()[0]
  pairs = conflicts.phase_verdicts(record)["phases"][-1]["pair"]
  assert pairs["denoise_30~sr_x2"]["verdict"] == conflicts.pair_verdict(iv)
  estimate = "   nan" if np.isnan(iv.estimate) else f"{iv.estimate:+.3f}"
  assert lines[start + 1].startswith(f"  denoise_30~sr_x2  {estimate}")
  assert lines[start + 1].endswith(
      "  " + conflicts.verdict_text(pairs["denoise_30~sr_x2"], pairs))
  # then where in the body, over the same phase, as analyze says it
  where = conflicts.format_layers_beyond_noise(conflicts.layers_beyond_noise(
      record.last(conflicts.headline_window(record)), top=3)).splitlines()
  assert where[0].startswith("per-module corrected cos beyond noise over all ")
  at = lines.index(where[0])
  assert at > start + 1 and lines[at:at + len(where)] == where
  assert lines[at + len(where)] == (f"figures: {workdir}/conflicts/ (cos_matrix.png, "
                                    "cos_layers_pairs.png, cos_curves.png, "
                                    "cos_layers_steps-<pair>.png)")
  assert lines[at + len(where) + 1] == ("per phase, layers and noise floor: python "
                                        f"launch/analyze.py --workdir={workdir}")


def test_resume_continues_from_the_saved_step_exactly(straight_run, tmp_path, capsys):
  workdir = str(tmp_path / "resumed")
  first = train.train_and_evaluate(_config(total_steps=2), workdir)  # "interrupted" after step 2
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  cpu = jax.default_backend() == "cpu"
  if cpu:  # as if that attempt ran where XLA had one more CPU thread (cpu_threads 0: them all)
    from mtl import xla_options
    compute, threads = os.path.join(workdir, "compute.json"), xla_options.cpu_threads()
    assert files.read_json(compute)["cpu_threads"] == threads
    files.write_json(compute, {**files.read_json(compute), "cpu_threads": threads + 1})
  train.train_and_evaluate(_config(), workdir)               # same command, longer budget
  # The first end's results are kept under their step's name, said so; config.json is in force.
  kept = os.path.join(workdir, run_folder.results_name(2, final=False))
  assert files.read_json(kept) == json.loads(json.dumps(first)) and first["step"] == 2
  assert files.read_json(os.path.join(workdir, run_folder.RESULTS_FILE))["step"] == 4
  out = capsys.readouterr().out
  assert f"kept the results of step 2 as {kept}: the run goes on to a new end" in out
  assert "resuming with changed fields: total_steps (2 -> 4)" in out
  assert not cpu or (f"warning: this attempt runs on {threads} XLA CPU thread(s), the steps "
                     f"before 2 ran on {threads + 1}: a CPU run's sums split by thread") in out
  assert run_folder.read_config(workdir).total_steps == 4
  config = _config()
  resumed, step = _params(workdir, config)
  straight, _ = _params(straight_run[0], config)
  assert step == 4
  for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(straight)):
    np.testing.assert_array_equal(a, b)  # bitwise on CPU
  assert list(conflicts.load(workdir).steps) == [0, 1, 2, 3]  # every probe step once


def test_resume_on_another_mesh_restores_resharded(straight_run, tmp_path):
  workdir = str(tmp_path / "remeshed")
  train.train_and_evaluate(_config(total_steps=2), workdir)  # 1 device
  config = _config()
  config.mesh.fsdp = 2                                       # 2 devices, the body split in two
  train.train_and_evaluate(config, workdir)
  resumed, step = _params(workdir, _config())
  straight, _ = _params(straight_run[0], _config())
  assert step == 4
  for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(straight)):
    np.testing.assert_allclose(a, b, atol=4 * config.optim.lr)  # Adam: ~lr per step at most
  assert list(conflicts.load(workdir).steps) == [0, 1, 2, 3]


def test_a_run_with_trained_loss_weights_is_fine_tuned_from_and_restored(tmp_path):
  """uncertainty's log-variances are saved with the parameters (params['loss_weighting']): a
  restore that named only the model's groups failed as 'cannot be read', 'move 2/ out'."""
  from mtl import restoration
  joint_dir = str(tmp_path / "joint")
  config = _config(total_steps=2, checkpoint_every=2)
  config.conflicts.every = 0
  config.mtl.loss_weighting = "uncertainty"
  train.train_and_evaluate(config, joint_dir)
  saved, _ = checkpoints.restore_params(joint_dir, run_folder.saved_params(
      config, run_state.build(config).model))
  assert saved["loss_weighting"]["log_var"].shape == (2,)
  with pytest.raises(ValueError, match="step 2 in .* holds other parameters than its reader's "
                     "model and config"):  # not 'cannot be read', nor 'move 2/ out'
    checkpoints.restore_params(joint_dir, run_state.build(config).model.abstract_params())
  wider = _config(total_steps=2)  # the same tree, other shapes (a config.json edited)
  wider.model.n_feats *= 2
  with pytest.raises(ValueError, match="step 2 in .* holds other parameters than its reader's "
                     "model and config"):
    checkpoints.restore_params(joint_dir, run_state.build(wider).model.abstract_params())
  target = _config(regime="finetune", tasks=("sr_x2",), init_from=joint_dir, total_steps=2)
  run = run_state.build(target)
  with jax.set_mesh(run.mesh):
    state, note = run_state.finetune_params(run, joint_dir)
  assert "step 2): body, sr_x2's head, query and tail" in note and "loss_weighting" not in (
      state.params)
  np.testing.assert_array_equal(jax.device_get(state.params["body"]["token_embed"]["kernel"]),
                                saved["body"]["token_embed"]["kernel"])
  _, model, params, step = restoration.load_model(joint_dir)
  assert step == 2 and sorted(params) == ["body", "heads", "queries", "tails"]


def test_finetune_starts_from_the_joint_body(straight_run, tmp_path):
  joint_dir = straight_run[0]
  config = _config(regime="finetune", tasks=("sr_x2",), init_from=joint_dir, total_steps=2)
  run = run_state.build(config)
  with jax.set_mesh(run.mesh):
    state, note = run_state.finetune_params(run, joint_dir)
  assert "a joint run of denoise_30,sr_x2, step 4" in note
  joint, _ = _params(joint_dir, _config())
  got = jax.device_get(state.params)
  for a, b in zip(jax.tree_util.tree_leaves(got["body"]), jax.tree_util.tree_leaves(joint["body"])):
    np.testing.assert_array_equal(a, b)
  for group in ("heads", "tails", "queries"):
    assert list(got[group]) == ["sr_x2"]
    for a, b in zip(jax.tree_util.tree_leaves(got[group]),
                    jax.tree_util.tree_leaves(joint[group]["sr_x2"])):
      np.testing.assert_array_equal(a, b)
  # Its data continues after the joint run's 4 steps (data.step_offset, as a study sets it):
  # its step 0 trains on the crops and degradations of the joint run's step 4, not step 0's.
  config.data.step_offset, config.log_every = 4, 1
  images = sources.open_images(config.data, "train")
  step = jax.jit(step_lib.make_step(run.model, config, run.optimizer, ("sr_x2",), run.plan))
  first_loss = {}
  with jax.set_mesh(run.mesh):
    for data_step in (4, 0):
      batch = pipeline.batch_for_step(images, run.model.specs, config.model.patch_size,
                                      config.data.batch_size, config.seed, data_step)
      hyper = dict(step_lib.step_args(config), step_offset=np.int32(data_step))
      _, metrics = step(state, sharding.to_global(batch, run.mesh), hyper)
      first_loss[data_step] = float(metrics["loss/total"])
  results = train.train_and_evaluate(config, str(tmp_path / "ft"))
  assert list(results["tasks"]) == ["sr_x2"] and results["step"] == 2
  logged = _read_metrics(str(tmp_path / "ft"))[0]
  assert logged["step"] == 1
  np.testing.assert_allclose(logged["loss_total"], first_loss[4], rtol=1e-5)
  assert abs(first_loss[4] - first_loss[0]) > 1e-3 * first_loss[4]


def _cli_args(workdir, **changes):
  """launch/train.py arguments for _config() (with `changes`), on the 8 CPU devices of this
  session (conftest): XLA's CPU code for one device depends on how many exist, in the last bits."""
  fields = {"data.batch_size": 2, "mesh.data": 1, "total_steps": 4, "checkpoint_every": 2,
            "log_every": 2, "optim.schedule": "constant", "optim.warmup_steps": 0,
            "eval.max_side": 48, "eval.max_images": 1, "eval.tile_overlap": 0,
            "conflicts.every": 1, "conflicts.batch_size": 0}
  fields.update(changes)
  return (["--config=experiments/tiny.py:tasks=denoise_30+sr_x2", f"--workdir={workdir}",
           "--num_cpu_devices=8"]
          + [f"--config.{k}={v}" for k, v in fields.items()])


def _signal_when(args, log, line, sig):
  """(exit status, output) of launch/train.py `args` sent `sig` once its output shows `line`."""
  import time
  with open(log, "w") as out:
    proc = subprocess.Popen([sys.executable, "launch/train.py", *args], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT)
  try:
    deadline = time.monotonic() + 500
    while line not in log.read_text() and proc.poll() is None:
      assert time.monotonic() < deadline, log.read_text()[-3000:]
      time.sleep(0.05)
    proc.send_signal(sig)
    rc = proc.wait(timeout=300)
  finally:
    if proc.poll() is None:
      proc.kill()
  return rc, log.read_text()


def test_ctrl_c_checkpoints_resume_is_exact_and_a_finished_run_is_not_rerun(straight_run,
                                                                          tmp_path):
  import signal
  import socket
  workdir = tmp_path / "interrupted"
  workdir.mkdir()
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (workdir / "train.lock").write_text(json.dumps(  # left by a killed trainer: does not block
      {"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
  log = tmp_path / "first.out"
  # A far end and no periodic checkpoint: the checkpoint found is Ctrl-C's.
  cache = tmp_path / "xla"
  args = _cli_args(workdir, total_steps=1000, checkpoint_every=1000, log_every=1) + [
      f"--compile_cache={cache}"]
  rc, text = _signal_when(args, log, "step 1/1000", signal.SIGINT)
  assert rc == run_folder.PREEMPTED_EXIT, text[-3000:]
  assert "Traceback" not in text and "SIGINT received: saving a checkpoint" in text
  saved = int(re.search(r"preempted: checkpoint saved at step (\d+) in ", text).group(1))
  assert 1 <= saved < 4, text[-3000:]  # resumed below to the straight run's 4 steps
  assert f"removed the stale lock of pid {dead.pid}" in text
  assert re.search(r"^run: joint denoise_30,sr_x2 \| [\d.]+M parameters \| 8 cpu device\(s\) "
                   r"on \d+ thread\(s\), mesh data=1 x fsdp=1 \| .* \(fresh\) \| loss: L1 on the "
                   r"\[0, 255\]", text, re.M)
  assert re.search(r"^compiled the probe step in [\d.]+s$", text, re.M)
  assert -1 < text.find("compiling the probe step\n") < text.find("compiled the probe step")
  assert os.listdir(cache)  # the compiled steps, for the resume to load

  # Its normal length, stopped again once its last step is logged: before its final evaluation
  # (the process must not die on the signal, 143, with its lock left behind).
  rc, text = _signal_when(_cli_args(workdir) + [f"--compile_cache={cache}"],
                          tmp_path / "second.out", "step 4/4", signal.SIGTERM)
  assert f"(resuming at step {saved})" in text
  assert rc == run_folder.PREEMPTED_EXIT and "Traceback" not in text, text[-3000:]
  assert f"preempted: checkpoint saved at step 4 in {workdir}; run the same command to " \
         "evaluate it" in text
  assert not (workdir / "train.lock").exists() and not (workdir / "results.json").exists()
  third = _launch(*_cli_args(workdir), f"--compile_cache={cache}")  # evaluates only
  assert third.returncode == 0, third.stderr[-3000:]
  assert "(resuming at step 4)" in third.stdout and (workdir / "results.json").exists()
  resumed, step = _params(str(workdir), _config())
  straight, _ = _params(straight_run[0], _config())
  assert step == 4
  for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(straight)):
    np.testing.assert_array_equal(a, b)  # bitwise on CPU
  records = _read_metrics(str(workdir))
  assert [r["step"] for r in records][-2:] == [saved, 4] and sorted(records[-1]["loss"]) == [
      "denoise_30", "sr_x2"]
  assert [r["step"] for r in records] == sorted({r["step"] for r in records})  # each step once
  assert records[-1]["loss_total"] == pytest.approx(sum(records[-1]["loss"].values()), rel=1e-5)
  from mtl import events
  assert events.read_hparams(str(workdir / "events"))["tasks"] == "denoise_30,sr_x2"
  assert not (workdir / "train.lock").exists()

  before = _snapshot(str(workdir))
  again = _launch(*_cli_args(workdir))
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.strip().splitlines()[-1] == (
      f"already finished at step 4; results in {workdir}/results.json")
  after = _snapshot(str(workdir))
  log_path = str(workdir / "train.log")
  assert {k: v for k, v in after.items() if k != log_path} == {
      k: v for k, v in before.items() if k != log_path}  # no new events, results or checkpoints
  attempts = [l for l in open(log_path) if l.startswith("=== ")]
  assert len(attempts) == 4 and "launch/train.py" in attempts[0]  # stopped twice, done, again
  # a figure the finishing attempt did not write (killed while it wrote them) is drawn; it said
  # "already finished" and left the run without them
  os.remove(workdir / "conflicts" / "cos_curves.png")
  redrawn = _launch(*_cli_args(workdir))
  assert redrawn.returncode == 0, redrawn.stderr[-3000:]
  assert ("drawing its conflict figures: the attempt that finished it stopped before they were "
          "all written") in redrawn.stdout
  assert (workdir / "conflicts" / "cos_curves.png").is_file()
  assert "figures: " in redrawn.stdout
  # a field a resume may change, changed for a finished run: said not to apply (it was silent)
  changed = _launch(*_cli_args(workdir, **{"eval.max_images": 2}))
  assert changed.returncode == 0, changed.stderr[-3000:]
  assert changed.stdout.strip().splitlines()[-1] == (
      "not applied to a finished run: eval.max_images (1 -> 2); to score other test sets, "
      "restore them with launch/restore.py and score them with launch/score.py")


def _launch(*args):
  return subprocess.run([sys.executable, "launch/train.py", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def _snapshot(workdir):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(workdir) for f in files}


def test_a_different_config_is_refused_and_nothing_is_touched(straight_run):
  workdir = straight_run[0]
  before = _snapshot(workdir)
  with pytest.raises(ValueError, match=r"different config: tasks"):
    train.train_and_evaluate(_config(tasks=("denoise_30", "derain")), workdir)
  assert _snapshot(workdir) == before


def test_total_steps_below_the_saved_step_is_refused_and_nothing_is_touched(straight_run):
  workdir = straight_run[0]
  before = _snapshot(workdir)
  with pytest.raises(ValueError, match=r"^total_steps=3 is below step 4, the latest checkpoint"):
    train.train_and_evaluate(_config(total_steps=3), workdir)
  assert _snapshot(workdir) == before


def test_a_resume_evaluates_the_saved_step_its_attempt_never_evaluated(straight_run, tmp_path,
                                                                       capsys):
  """An attempt (total_steps=8, eval_every=4) that died evaluating step 4, after saving it: the
  straight run's folder without its results. Its resume evaluates step 4 first, keeps the
  launcher's compile counts in compute.json, and drops the killed attempt's later points."""
  import shutil
  import time
  workdir = str(tmp_path / "eval_lost")
  shutil.copytree(straight_run[0], workdir)
  os.remove(os.path.join(workdir, run_folder.RESULTS_FILE))
  compute_path = os.path.join(workdir, run_folder.COMPUTE_FILE)
  earlier = files.read_json(compute_path)
  launcher = {"programs_compiled": 3, "programs_loaded": 2, "compiled_programs": {"step": 3}}
  files.write_json(compute_path, {**earlier, **launcher})  # as launch/train.py adds them
  with events.Writer(os.path.join(workdir, "events")) as killed:  # logged after step 4's save
    killed.scalars(5, {"train/loss/total": 1e9})
  time.sleep(1.1)  # event files are read in name order: their creation time, in seconds
  train.train_and_evaluate(_config(total_steps=8, eval_every=4), workdir)
  out = capsys.readouterr().out
  assert "evaluating step 4: the attempt that saved it stopped before its evaluation" in out
  # Every result file an uninterrupted run with eval_every=4 has, and TensorBoard's once each.
  assert sorted(n for n in os.listdir(workdir) if n.startswith("results")) == [
      "results-000000004.json", "results.json"]
  at_4 = files.read_json(os.path.join(workdir, "results-000000004.json"))
  assert at_4["step"] == 4
  assert at_4["tasks"] == json.loads(json.dumps(straight_run[1]["tasks"]))  # step 4's params
  steps, psnr = events.read_scalars(os.path.join(workdir, "events"), "eval/sr_x2/photos/psnr_y")
  assert list(steps) == [4, 8] and psnr[0] == pytest.approx(at_4["tasks"]["sr_x2"]["photos"][
      "psnr_y"])
  steps, loss = events.read_scalars(os.path.join(workdir, "events"), "train/loss/total")
  straight_steps, straight_loss = events.read_scalars(os.path.join(straight_run[0], "events"),
                                                      "train/loss/total")
  assert list(steps) == [2, 4, 6, 8] and 1e9 not in loss  # step 5's point is gone
  np.testing.assert_array_equal(loss[:2], straight_loss)  # steps up to the checkpoint kept
  compute = files.read_json(compute_path)
  assert {k: compute[k] for k in launcher} == launcher
  assert compute["steps"] == 8 and compute["wall_seconds"] > earlier["wall_seconds"]


def test_bad_task_exits_with_one_line(tmp_path):
  result = _launch("--config=experiments/tiny.py", f"--workdir={tmp_path / 'w'}",
                   "--config.tasks=('sr_x5',)")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: unknown task 'sr_x5'")
  assert not os.path.exists(tmp_path / "w")


# The last good step's weights (moved by ~1e30) are finite but overflow in the evaluation's forward.
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "nan")
  config = _config(total_steps=6, checkpoint_every=1, log_every=1)
  config.optim.lr = 1e30  # Adam moves every weight by ~lr: the next forward overflows
  with pytest.raises(train.NonFiniteLoss, match=r"non-finite (loss|grad_norm).*the last good "
                                                r"checkpoint \(step \d\) is kept"):
    train.train_and_evaluate(config, workdir)
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  assert saved and max(saved) < 6
  # the attempt's time is spent all the same (a study's compute table adds it); no step count:
  # its last steps trained nothing a resume keeps
  compute = files.read_json(os.path.join(workdir, run_folder.COMPUTE_FILE))
  assert compute["wall_seconds"] > 0 and "steps" not in compute
  params, _ = _params(workdir, config)
  assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
  # The divergence is recorded for a study (the lr's outcome), and cleared by the next start.
  diverged = os.path.join(workdir, run_folder.DIVERGED_FILE)
  assert "training stopped" in files.read_json(diverged)["error"]
  config.total_steps = max(saved)  # resumed to end at its last good step: its training finishes,
  # but weights moved by ~1e30 overflow in the evaluation: diverged again, recorded afresh
  from mtl import evaluate
  with pytest.raises(evaluate.NonFiniteOutput, match=r"evaluation at step \d: task"):
    train.train_and_evaluate(config, workdir)
  assert "training stopped" not in files.read_json(diverged)["error"]
  assert not os.path.exists(os.path.join(workdir, run_folder.RESULTS_FILE))


def test_a_non_finite_evaluation_output_is_recorded_as_a_divergence(tmp_path, monkeypatch):
  from mtl import evaluate
  workdir = str(tmp_path / "nan_eval")
  monkeypatch.setattr(evaluate, "restore_float", lambda apply, image, scale, *args: np.full(
      (image.shape[0] * scale, image.shape[1] * scale, 3), np.nan, np.float32))
  with pytest.raises(evaluate.NonFiniteOutput, match=r"task denoise_30, test set photos"):
    train.train_and_evaluate(_config(tasks=("denoise_30",), total_steps=1), workdir)
  # A study reads it as this lr's outcome (as a non-finite loss), not as a failure to fix.
  assert "non-finite values" in files.read_json(os.path.join(workdir, run_folder.DIVERGED_FILE))[
      "error"]
  assert not os.path.exists(os.path.join(workdir, run_folder.RESULTS_FILE))


def test_a_probe_batch_of_its_own_is_measured_on_probe_steps_only(tmp_path):
  """conflicts.batch_size: probes every `every` steps on fresh batches of that size, which the
  store, the figures' titles and the run's answer name; the training batch stays its own."""
  config = _config()
  config.conflicts.every, config.conflicts.batch_size = 2, 4
  workdir = str(tmp_path / "probe_batch")
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    train.train_and_evaluate(config, workdir)
  record = conflicts.load(workdir)
  assert record.steps.tolist() == [0, 2]
  assert record.probe_batch == {"size": 4, "fresh": True}
  assert record.interval_method == "independent"
  assert "probe batch of 4 fresh images per task (not trained on), every 2 steps" in out.getvalue()
  assert "fresh batches of 4/task" in record.window_label()
  assert [m["steps"] for m in _read_metrics(workdir)] == [2, 2]  # every step trained once


def test_fresh_batches_degrade_with_the_real_rain_streaks_training_used(straight_run, tmp_path):
  # The run's config names a streak folder: the measurement reads it (here an empty one, so the
  # one-line refusal shows it is read) rather than measuring derain on procedural rain.
  config = _config()
  config.degrade.rain.streak_dir = str(tmp_path)
  with pytest.raises(ValueError, match=f"no rain streak layers .* under {tmp_path}"):
    measure.measure_conflicts(config, straight_run[0], num_batches=1, batch_size=2)


def test_analyze_measures_a_saved_model_on_fresh_batches(straight_run, tmp_path):
  out = tmp_path / "analysis"
  result = subprocess.run(
      [sys.executable, "launch/analyze.py", f"--checkpoint={straight_run[0]}",
       "--config=experiments/tiny.py", "--config.tasks=('denoise_30','sr_x2')",
       "--config.data.batch_size=2", "--config.mesh.data=1", "--config.cpu_threads=3",
       "--batch_size=2", "--num_batches=3", "--halfwidth=0", f"--out={out}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  # On the config's XLA CPU threads (a CPU's sums depend on them), whatever the machine's cores
  assert ("checkpoint step 4: whole-body cosine over 3 fresh probe batches of 2 images per task"
          + (" (3 CPU thread(s))" if jax.default_backend() == "cpu" else "")) in result.stdout
  # The probes are named by the checkpoint, not by the batch seeds (10000000 ...), and few
  # batches come with how many to measure.
  assert "whole body, checkpoint step 4, 3 fresh batches of 2/task" in result.stdout
  assert "10000000" not in result.stdout
  assert re.search(r"after 3 fresh batches (the widest interval, denoise_30~sr_x2, is "
                   r"\+-\d\.\d{3}|denoise_30~sr_x2 has no interval)", result.stdout)
  assert "--num_batches=32" in result.stdout
  record = conflicts.load(str(out))
  assert record.gramians.shape[:1] == (3,) and record.gramians.shape[2:] == (2, 2)
  assert os.path.exists(out / "conflicts" / "cos_matrix.png")
  # Its figures name the run and the checkpoint, and count batches, not training steps.
  run_name = os.path.basename(straight_run[0].rstrip("/"))
  assert record.checkpoint == {"run": run_name, "step": 4} and record.name == run_name
  assert record.window_label() == "checkpoint step 4, 3 fresh batches of 2/task"
  assert record.x_axis()[0].tolist() == [1, 2, 3]
  again = subprocess.run(  # the store is never overwritten; no --config: the run's own
      [sys.executable, "launch/analyze.py", f"--checkpoint={straight_run[0]}", "--num_batches=1",
       f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 1 and "already holds a conflict store" in again.stderr
  other = subprocess.run(  # a config of other tasks: named as such, not as an unreadable checkpoint
      [sys.executable, "launch/analyze.py", f"--checkpoint={straight_run[0]}",
       "--config=experiments/tiny.py", "--num_batches=1", f"--out={tmp_path / 'other'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert other.returncode == 1 and other.stderr.strip().count("\n") == 0, other.stderr
  assert ("--config's tasks (denoise_30, sr_x2, derain) differ from the checkpoint run's "
          "(denoise_30, sr_x2); omit --config" in other.stderr), other.stderr
  assert not os.path.exists(tmp_path / "other")


def test_relative_paths_are_saved_absolute_and_a_resume_from_elsewhere_is_refused(
    tmp_path, monkeypatch, capsys):
  # data.tfds_dir=tfds and a test set S=set, typed relative: the same command run in another
  # folder read other data and scored another set under the same name, unannounced
  from PIL import Image
  rng = np.random.default_rng(0)
  for where in ("a", "b"):
    (tmp_path / where / "set").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)).save(
        tmp_path / where / "set" / "x.png")
  run = str(tmp_path / "run")
  config = _config(total_steps=1, checkpoint_every=1)
  config.eval.sets, config.data.tfds_dir, config.conflicts.every = "S=set", "tfds", 0
  monkeypatch.chdir(tmp_path / "a")
  train.train_and_evaluate(config, run)
  saved = files.read_json(os.path.join(run, "config.json"))
  assert (saved["eval"]["sets"], saved["data"]["tfds_dir"]) == (f"S={tmp_path}/a/set",
                                                                f"{tmp_path}/a/tfds")
  config.total_steps = 2
  monkeypatch.chdir(tmp_path / "b")
  with pytest.raises(ValueError) as refused:  # the data: refused
    train.train_and_evaluate(config, run)
  assert f"data.tfds_dir ('{tmp_path}/a/tfds' -> '{tmp_path}/b/tfds')" in str(refused.value)
  config.data.tfds_dir = f"{tmp_path}/a/tfds"
  capsys.readouterr()
  assert train.train_and_evaluate(config, run)["step"] == 2  # the test set may change: said
  assert (f"resuming with changed fields: eval.sets ('S={tmp_path}/a/set' -> "
          f"'S={tmp_path}/b/set')") in capsys.readouterr().out
  # a run that saved its paths as typed (before they were made absolute) resumes where it began
  files.write_json(os.path.join(run, "config.json"),
                   dict(saved, data=dict(saved["data"], tfds_dir="tfds"), total_steps=2))
  monkeypatch.chdir(tmp_path / "a")
  config.total_steps, config.data.tfds_dir = 3, "tfds"
  capsys.readouterr()
  assert train.train_and_evaluate(config, run)["step"] == 3
  assert "resuming with changed fields: total_steps (2 -> 3);" in capsys.readouterr().out  # only
  assert files.read_json(os.path.join(run, "config.json"))["data"]["tfds_dir"] == (
      f"{tmp_path}/a/tfds")


def test_a_model_of_other_shapes_is_named_field_by_field(straight_run, tmp_path):
  # a fine-tune from the run, refused before anything starts, and analyze's checkpoint mode
  config = _config()
  config.regime, config.init_from, config.tasks = "finetune", straight_run[0], ("sr_x2",)
  config.model.n_feats, config.model.num_heads = 8, 1
  with pytest.raises(ValueError) as refused:
    run_config.validate(config)
  assert str(refused.value) == (
      f"init_from={straight_run[0]} was trained with model.n_feats=16 (here 8), "
      "model.num_heads=2 (here 1); a fine-tune keeps the model's shapes: add "
      "--config.model.n_feats=16 --config.model.num_heads=2")
  other = subprocess.run(
      [sys.executable, "launch/analyze.py", f"--checkpoint={straight_run[0]}",
       "--config=experiments/tiny.py:denoise_30,sr_x2", "--config.model.n_feats=8",
       "--num_batches=1", f"--out={tmp_path / 'other'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert other.returncode == 1 and other.stderr == (
      "error: --config's model differs from the checkpoint run's: model.n_feats=8 (the run's: "
      f"16); omit --config to measure with the run's own ({straight_run[0]}/config.json)\n")


def test_a_checkpoint_of_a_given_step_is_measured_on_batches_of_its_own(straight_run):
  # --step: that checkpoint's parameters, on fresh batches keyed by (the run's seed, its step):
  # the same Gramians as the reference probe on that batch at those parameters.
  from mtl import measure, step as step_lib
  from mtl.data import pipeline, sources
  from mtl.models import ipt
  config = _config()
  said = []
  steps, grams, _, tasks, saved = measure.measure_conflicts(
      config, straight_run[0], 3, 2, log=lambda line, **k: said.append(line), step=2,
      log_seconds=0)
  assert saved == 2 and tasks == ["denoise_30", "sr_x2"] and grams.shape[0] == 3
  # progress from the second batch (the first compiles), none at the last: the result follows
  assert len(said) == 1 and re.fullmatch(r"batch 2/3 \| [\d.]+ batches/s \| ETA \w+", said[0])
  assert measure.probe_seed(config.seed, 2) != measure.probe_seed(config.seed, 4)
  config.regime, config.schedule = "joint", "all"
  config.seed = measure.probe_seed(config.seed, 2)
  run = run_state.build(config)
  params, _ = checkpoints.restore_params(os.path.join(straight_run[0], "checkpoints"),
                                         run.abstract_state.params, 2)
  _, order = ipt.body_layer_order(params["body"])
  images = sources.open_images(config.data, "train")
  probe = jax.jit(lambda p, b, s: step_lib.probe_gramians(p, b, s, run.model, config, tasks))
  for k, step in enumerate(steps):
    batch = pipeline.batch_for_step(images, run.model.specs, config.model.patch_size, 2,
                                    config.seed, int(step))
    want = np.asarray(probe(params, batch, np.int32(step)))[np.asarray(order)]
    # The same computation on the same inputs, compiled twice: equal up to summation order.
    np.testing.assert_allclose(grams[k], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  with pytest.raises(ValueError, match=r"step 3 has no checkpoint in .*; saved steps: 2, 4"):
    measure.measure_conflicts(config, straight_run[0], 1, 2, step=3)
  # on all 8 devices: the run's training batch (2 a step) does not divide them, the probe batch
  # does; the former, never drawn here, refused the measurement
  wide = _config()
  wide.mesh.data = -1
  assert measure.measure_conflicts(wide, straight_run[0], 1, 8, log=lambda *a, **k: None,
                                   step=2)[1].shape[0] == 1


def test_analyze_probes_until_its_halfwidth_target_or_max_batches(straight_run, tmp_path):
  # A target no finite number of batches reaches: it measures --max_batches and says so, with
  # the batches the target would take, naming the knob as a study's runs give it
  # (launch/study.py: --knobs=study); a store already at --out is refused before measuring.
  args = [sys.executable, "launch/analyze.py", f"--checkpoint={straight_run[0]}",
          "--config=experiments/tiny.py", "--config.tasks=('denoise_30','sr_x2')",
          "--config.data.batch_size=2", "--config.mesh.data=1", "--batch_size=2",
          "--num_batches=4", "--halfwidth=1e-9", "--max_batches=6", f"--out={tmp_path / 'seq'}"]
  result = subprocess.run(args + ["--knobs=study"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  assert conflicts.load(str(tmp_path / "seq")).num_steps == 6
  assert re.search(r"target not reached: the widest interval, denoise_30~sr_x2, is "
                   r"(\+-[\d.]+ after 6 batches; \+-1e-09 would take about \d+ batches "
                   r"\(final_conflicts\.max_batches\)|not measurable after 6 batches)",
                   result.stdout)
  assert "--max_batches" not in result.stdout and "--batch_size" not in result.stdout
  again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode == 1 and "already holds a conflict store" in again.stderr


def test_a_checkpoint_the_disk_cannot_hold_stops_with_one_line(tmp_path):
  # Free space is read from the file system itself: a state far larger than any disk.
  huge = {"params": jax.ShapeDtypeStruct((1 << 50,), np.float32)}
  needed, free = checkpoints.space_shortfall(str(tmp_path / "not" / "yet"), huge)
  assert needed == 4 * (1 << 50) + checkpoints.SPACE_MARGIN_BYTES and free > 0
  assert checkpoints.space_shortfall(str(tmp_path), {"x": jax.ShapeDtypeStruct((4,), np.int8)}) \
      is None


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
  # A real full file system: a tmpfs that holds one checkpoint but not two (root only).
  config = _config(total_steps=4, checkpoint_every=2, log_every=2)
  config.conflicts.every = 0
  size = checkpoints.state_bytes(run_state.build(config).abstract_state)
  mount = tmp_path / "small"
  mount.mkdir()
  tmpfs_mb = (size + checkpoints.SPACE_MARGIN_BYTES) // 2 ** 20 + 3
  try:
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_mb}m", "tmpfs",
                              str(mount)], capture_output=True).returncode == 0
  except OSError:  # no mount command
    mounted = False
  if not mounted:
    pytest.skip("needs a tmpfs (mount -t tmpfs: root)")
  try:
    workdir = str(mount / "run")
    with pytest.raises(checkpoints.DiskFull) as error:
      train.train_and_evaluate(config, workdir)
    message = str(error.value)
    assert "\n" not in message
    assert re.search(rf"not enough space in {workdir}/checkpoints for the checkpoint of step 4: "
                     r"it needs \d+\.\d MB, \d+\.\d MB are free; the last good checkpoint "
                     r"\(step 2\) is kept", message), message
    assert checkpoints.latest_saved_step(workdir) == 2
    params, step = _params(workdir, config)
    assert step == 2 and all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
  finally:
    subprocess.run(["umount", "--lazy", str(mount)], check=False)  # tensorstore may hold a file


def test_the_space_check_waits_for_the_save_in_flight(tmp_path):
  # Free space read while the last async save still writes overstates it by that save's bytes
  # (CI once passed the check at step 4 and hit ENOSPC inside orbax); 64 MB takes a while to land.
  mngr = checkpoints.manager(str(tmp_path))
  weights = jax.numpy.asarray(np.random.rand(1 << 24), np.float32)
  state = types.SimpleNamespace(params={"w": weights}, opt_state={"m": jax.numpy.zeros(4)})
  checkpoints.save(mngr, 2, state, force=True)
  train._check_space(mngr, state, 4)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]  # committed, no temporary folder
  mngr.close()


def test_the_progress_line_lists_tasks_in_config_order(tmp_path):
  from mtl import events
  names = ("sr_x2", "derain", "denoise_30")  # the banner's order, not alphabetical
  metrics = {"loss/total": np.float32(6.0), "grad_norm": np.float32(1.0),
             **{f"loss/{t}": np.float32(i + 1) for i, t in enumerate(names)}}
  progress = progress_lib.Progress(10, 0, every=1)
  out = io.StringIO()
  with events.Writer(str(tmp_path / "events"), enabled=False) as writer, \
      contextlib.redirect_stdout(out):
    train._log_metrics([(0, metrics)], writer, progress, lambda step: 1e-3, 1, None, names)
  assert re.search(r"\| loss 6 \| sr_x2 1 \| derain 2 \| denoise_30 3$", out.getvalue().strip()), (
      out.getvalue())


def test_a_fresh_start_after_a_killed_attempt_shows_its_own_points_and_hparams(tmp_path):
  """An attempt killed before its first checkpoint (total_steps=2) left points and hparams in
  events/; the next start is fresh (step 0), and marked as a resume's is: TensorBoard and
  read_scalars drop the killed attempt's points, and the HParams are this attempt's."""
  import time
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.plugins.hparams import metadata
  workdir = str(tmp_path / "run")
  logdir = os.path.join(workdir, "events")
  with events.Writer(logdir) as killed:
    killed.hparams(progress_lib.hparams_of(_config(total_steps=2)), trial_id="run")
    killed.scalars(1, {"train/loss/total": 1e9})
    killed.scalars(2, {"train/loss/total": 1e9})
  time.sleep(1.1)  # event files are read in name order: their creation time, in seconds
  train.train_and_evaluate(_config(), workdir)
  steps, loss = events.read_scalars(logdir, "train/loss/total")
  assert list(steps) == [2, 4] and 1e9 not in loss
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()  # TensorBoard's Python loader
  assert [(e.step, e.value != 1e9) for e in acc.Scalars("train/loss/total")] == [
      (2, True), (4, True)]
  assert events.read_hparams(logdir)["total_steps"] == 4
  shown = metadata.parse_session_start_info_plugin_data(  # what the HParams dashboard shows
      acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG])
  assert shown.hparams["total_steps"].number_value == 4


def _signal_during_step(monkeypatch, index, sig):
  """Send this process `sig` as the loop takes the batch of step `index` (0-based): the stop is
  asked for during that step, so the loop stops after it, at step index + 1."""
  import signal
  from mtl.data import prefetch

  class Signalling(prefetch.DevicePrefetch):
    def __next__(self):
      step, batch = super().__next__()
      if step == index:
        signal.raise_signal(sig)
      return step, batch
  monkeypatch.setattr(prefetch, "DevicePrefetch", Signalling)


def test_a_signal_s_line_that_meets_a_write_in_progress_is_said_at_the_next_step(monkeypatch,
                                                                                 capsys):
  # a signal landing in the middle of a print made the handler's own print a reentrant call
  # (RuntimeError): the line was dropped, under load now and then (a closed terminal's SIGHUP)
  import builtins
  import signal
  stop = train._Preemption()
  stop.stage = "the next step"
  printed = builtins.print
  def busy(*args, **kwargs):
    raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stdout>'>")
  monkeypatch.setattr(builtins, "print", busy)
  stop._handle(signal.SIGHUP, None)
  monkeypatch.setattr(builtins, "print", printed)
  assert stop.requested and capsys.readouterr().out == ""
  assert stop.check(3)
  assert capsys.readouterr().out == (
      "SIGHUP received: saving a checkpoint at the next step and stopping\n")


def test_a_stop_during_the_start_up_ends_before_the_first_step_with_one_line(tmp_path,
                                                                               monkeypatch,
                                                                               capsys):
  # it killed the process without a word (SIGTERM) and left its train.lock behind
  import signal
  from mtl.data import prefetch

  class Signalling(prefetch.DevicePrefetch):  # the last thing the start-up builds
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      signal.raise_signal(signal.SIGTERM)
  monkeypatch.setattr(prefetch, "DevicePrefetch", Signalling)
  workdir, before = str(tmp_path / "run"), signal.getsignal(signal.SIGTERM)
  with pytest.raises(train.Preempted, match=r"^stopped before training started: nothing new to "
                                            r"save; run the same command to start it$"):
    train.train_and_evaluate(_config(), workdir)
  assert ("SIGTERM received: stopping before the first step (nothing new to save)"
          in capsys.readouterr().out)
  assert checkpoints.latest_saved_step(workdir) is None
  assert not os.path.exists(os.path.join(workdir, run_folder.LOCK_FILE))
  assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def test_a_stop_at_an_evaluation_step_saves_it_and_the_resume_evaluates_it(tmp_path,
                                                                          monkeypatch, capsys):
  """SIGTERM during step 3, an evaluation step: the checkpoint of step 3 is saved and the run
  stops without evaluating it (it did, delaying the stop by an evaluation); the resume evaluates
  it first, and logs its progress at every multiple of log_every (4, 6, 8: not 6 and 8)."""
  import signal
  workdir = str(tmp_path / "run")
  config = _config(total_steps=8, eval_every=3, checkpoint_every=100, log_every=2)
  config.conflicts.every = 0
  _signal_during_step(monkeypatch, 2, signal.SIGTERM)
  with pytest.raises(train.Preempted, match=r"checkpoint saved at step 3 in "):
    train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "SIGTERM received: saving a checkpoint at the next step and stopping" in out
  assert checkpoints.latest_saved_step(workdir) == 3
  at_3 = os.path.join(workdir, run_folder.results_name(3, final=False))
  assert not os.path.exists(at_3)
  assert list(events.read_scalars(os.path.join(workdir, "events"),
                                  "eval/sr_x2/photos/psnr_y")[0]) == []
  monkeypatch.undo()
  train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "evaluating step 3: the attempt that saved it stopped before its evaluation" in out
  assert files.read_json(at_3)["step"] == 3
  steps, _ = events.read_scalars(os.path.join(workdir, "events"), "eval/sr_x2/photos/psnr_y")
  assert list(steps) == [3, 6, 8]
  assert re.findall(r"^step (\d+)/8 ", out, re.M) == ["4", "6", "8"]


def test_an_evaluation_is_not_counted_in_steps_per_second(tmp_path, monkeypatch):
  """An evaluation at step 2 that takes 6 s (one slowed down): the rate logged after it is the
  steps' own. Counted, it would be at most 4 steps in 6 s (0.67/s) for up to 20 lines."""
  import time
  from mtl import evaluate
  evaluated = evaluate.evaluate

  def slow(*args, **kwargs):
    if not kwargs.get("final"):
      time.sleep(6.0)
    return evaluated(*args, **kwargs)
  monkeypatch.setattr(evaluate, "evaluate", slow)
  excluded = []
  exclude = progress_lib.Progress.exclude
  monkeypatch.setattr(progress_lib.Progress, "exclude",
                      lambda self, seconds: (excluded.append(seconds), exclude(self, seconds)))
  workdir = str(tmp_path / "run")
  config = _config(total_steps=4, eval_every=2, log_every=1, checkpoint_every=100)
  config.conflicts.every = 0
  train.train_and_evaluate(config, workdir)
  assert max(excluded) >= 6.0  # the evaluation's seconds (and the compiles')
  rates = {r["step"]: r["steps_per_sec"] for r in _read_metrics(workdir)}
  # counted, the rate could not exceed 4 steps in the 6 s of sleep alone: above it, the 6 s are
  # left out (the steps' own rate, ~5/s here, needs only a step under 1.5 s)
  assert rates[4] > 4 / 6, rates


def test_a_ctrl_c_to_one_of_several_processes_is_not_lost_where_it_was_dropped():
  # in a multi-process run a Ctrl-C is a KeyboardInterrupt at once; one raised where a caller
  # drops it (a finalizer, a native callback) let the process train on: check raises it again
  import signal
  before = signal.getsignal(signal.SIGINT)
  stop = train._Preemption()
  stop.synced = True  # as under jax.distributed, whose SIGTERM handler stays in place
  with stop:
    try:
      signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
      pass  # dropped
    with pytest.raises(KeyboardInterrupt):
      stop.check(3)
  assert signal.getsignal(signal.SIGINT) is before
  # dropped in a finalizer (as in jax's gc callback): Python printed it as an unraisable
  # traceback, though check raises it again; it reaches the hook no more
  class Finalized:
    def __del__(self):
      signal.raise_signal(signal.SIGINT)
  reported, hook = [], sys.unraisablehook
  sys.unraisablehook = reported.append
  try:
    stop = train._Preemption()
    stop.synced = True
    with stop:
      Finalized()
      assert stop.interrupted
      with pytest.raises(KeyboardInterrupt):
        stop.check(3)
    assert reported == [] and sys.unraisablehook == reported.append
  finally:
    sys.unraisablehook = hook
  # started as a shell's background job (SIGINT ignored): the terminal's Ctrl-C stays ignored
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    stop = train._Preemption()
    stop.synced = True
    with stop:
      signal.raise_signal(signal.SIGINT)
      assert not stop.interrupted
  finally:
    signal.signal(signal.SIGINT, before)
