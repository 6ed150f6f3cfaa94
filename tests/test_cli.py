"""launch/train.py's command line: list fields as `a,b`, config-file arguments (`key=value`),
--dry_run, and one `error:` line per bad input, before anything is written."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import ml_collections
import pytest

import cli
from experiments import from_json, ipt_paper, small, tiny

from mtl import run_defaults
from mtl import run_config, run_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args, timeout=300):
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  return subprocess.run([sys.executable, "launch/train.py", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_config_file_arguments_share_one_convention(tmp_path):
  assert tiny.get_config("tasks=sr_x2+sr_x3").tasks == ("sr_x2", "sr_x3")
  assert tiny.get_config("sr_x2,sr_x3").tasks == ("sr_x2", "sr_x3")  # the short form
  assert small.get_config("folder=/d/DIV2K").data.folder == "/d/DIV2K"
  assert small.get_config("/d/DIV2K").data.folder == "/d/DIV2K"
  assert ipt_paper.get_config("root=/r").data.folder == "/r/imagenet/train"
  assert ipt_paper.get_config("/r").data.folder == "/r/imagenet/train"
  path = tmp_path / "run_config.json"
  path.write_text(json.dumps(tiny.get_config("sr_x2").to_dict()))
  assert from_json.get_config(f"path={path}").tasks == ("sr_x2",)
  assert from_json.get_config(str(path)).tasks == ("sr_x2",)
  from experiments import allinone3, allinone5
  from experiments.studies import allinone3 as study3, ipt_paper as ipt_study, remedies
  for module, get in ((allinone3, lambda c: c.data.folder), (allinone5, lambda c: c.data.folder),
                      (study3, lambda s: s.run.data.folder),
                      (ipt_study, lambda s: s.run.data.folder)):
    assert get(module.get_config("root=/r")) == get(module.get_config("/r")), module
    assert get(module.get_config("/r")).startswith("/r/"), module
    with pytest.raises(ValueError, match="has no argument 'rot'; valid: root"):
      module.get_config("rot=/r")
  with pytest.raises(ValueError, match="remedies.py takes no argument"):
    remedies.get_config("/r")
  with pytest.raises(ValueError, match=r"experiments/tiny.py has no argument 'task'; valid: tasks"):
    tiny.get_config("task=sr_x2")
  with pytest.raises(ValueError, match=r"piece 'sr_x3' has no '='"):
    run_defaults.parse_arg("tasks=sr_x2,sr_x3", "experiments/tiny.py", "tasks", tasks="")


def test_normalize_splits_comma_lists_from_the_command_line():
  config = tiny.get_config()
  config.tasks = ("sr_x2,derain",)  # what ml_collections makes of --config.tasks=sr_x2,derain
  config.eval.sets = "photos"
  normalized = run_config.normalize(config)
  assert normalized.tasks == ("sr_x2", "derain")
  assert normalized.degrade.rain.length == (8, 24) and normalized.optim.milestones == (0.5, 0.75)
  assert config.tasks == ("sr_x2,derain",)  # the caller's config is left alone
  assert run_config.normalize(ml_collections.ConfigDict({"t": ("a, b,",)})).t == ("a", "b")


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  out = _launch("--config=experiments/tiny.py:tasks=sr_x2+derain", f"--workdir={workdir}",
                "--config.tasks=sr_x2,derain", "--config.degrade.rain.length=6,20",
                "--config.mesh.data=1", "--config.mtl.aggregator=cagrad",
                "--config.mtl.aggregator_args={'c': 0.4}", "--config.cpu_threads=3", "--dry_run")
  assert out.returncode == 0, out.stderr[-2000:]
  text = out.stdout
  assert "update cagrad(c=0.4)" in text  # a method's arguments as one dict
  assert "  tasks = ['sr_x2', 'derain']" in text and "  degrade.rain.length = [6, 20]" in text
  config = tiny.get_config("sr_x2,derain")
  config.mesh.data = 1
  counts = run_state.param_counts(run_state.build(config))
  assert (f"parameters: heads {counts['heads']:,}, body {counts['body']:,}, queries "
          f"{counts['queries']:,}, tails {counts['tails']:,}, total {counts['total']:,}") in text
  assert "mesh: data=1, fsdp=1 over 1 cpu device(s)" in text
  assert f"  metrics.jsonl  {workdir}/metrics.jsonl" in text
  assert "run: joint sr_x2,derain | 0.94M parameters | 1 cpu device(s) on 3 thread(s)" in text
  assert not workdir.exists()


@pytest.mark.parametrize("args, message", [
    (["--config.tasks=sr_x2,sr_x5"], "error: unknown task 'sr_x5'; valid tasks: "),
    (["--config.optim.nope=1"], "error: unknown config field 'optim.nope' in --config.optim.nope=1; "
                                "optim has: b1, b2,"),
    # a field below a missing one (ml_collections raises a bare KeyError)
    (["--config.mtl.conflicts.batch_size=8"], "error: unknown config field 'mtl.conflicts' in "
     "--config.mtl.conflicts.batch_size=8; mtl has: affinity_every,"),
    (["--config.eval.tile_overlap=48"], "error: eval.tile_overlap=48 must be in [0, model.patch_size=48)"),
    # a method's own argument: the group takes one dict (ml_collections adds no new field)
    (["--config.mtl.aggregator=cagrad", "--config.mtl.aggregator_args.c=0.4"],
     "error: --config.mtl.aggregator_args.c=0.4: give mtl.aggregator_args as one dict of the "
     "method's arguments, e.g. \"--config.mtl.aggregator_args={'c': 0.4}\""),
    # ml_collections would apply both (a tuple field: the second added to the first)
    (["--config.seed=1", "--config.seed=2"], "error: --config.seed is given 2 times; give each"),
    # the other checks of run_config.validate: tests/test_faults.py, in process
])
def test_bad_input_is_one_error_line_and_nothing_written(tmp_path, args, message):
  workdir = tmp_path / "w"
  out = _launch("--config=experiments/tiny.py", f"--workdir={workdir}", *args)
  assert out.returncode == 1
  errors = [l for l in out.stderr.splitlines() if "error" in l.lower()]
  assert len(errors) == 1 and errors[0].startswith(message), out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert not workdir.exists()


def test_a_url_workdir_is_refused_not_read_as_a_relative_folder(tmp_path):
  # os.path reads gs://bucket/run as <cwd>/gs:/bucket/run: a local folder, not the bucket
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "train.py"),
                        "--config=" + os.path.join(ROOT, "experiments", "tiny.py"),
                        "--workdir=gs://bucket/run", "--dry_run"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and out.stderr == (
      "error: --workdir=gs://bucket/run is a URL; the run folder is written with file I/O: "
      "mount the bucket (gcsfuse) and give that path\n"), out.stderr
  assert not os.listdir(tmp_path)


def test_a_path_given_as_tilde_is_the_home_folder_not_a_folder_named_tilde(tmp_path):
  # the shell expands no ~ after --workdir=: a folder named ~ was made in the current folder
  home = tmp_path / "home"
  out = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "train.py"),
                        "--config=" + os.path.join(ROOT, "experiments", "tiny.py"),
                        "--workdir=~/runs/w", "--config.data.tfds_dir=~/tfds", "--dry_run"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, HOME=str(home)))
  assert out.returncode == 0, out.stderr
  assert f"workdir {home}/runs/w (fresh)" in out.stdout
  assert f"data.tfds_dir = '{home}/tfds'" in out.stdout
  assert not os.path.exists(tmp_path / "~")


@pytest.mark.parametrize("change, message", [
    ({"total_steps": "abc"}, "total_steps='abc' must be a finite number, as the default 1000"),
    ({"optim": {"lr": float("nan")}}, "optim.lr=nan must be a finite number, as the default"),
    ({"optim": {"b3": 0.9}}, "unknown config field 'optim.b3'; optim has: b1, b2, ema_decay,"),
    ({"optim": 3}, "optim=3 must be a group of fields, as in the defaults"),
    # a misspelt top-level field (a top-level group of its own is reference data: kept)
    ({"total_step": 9}, "unknown config field 'total_step'; the config has: checkpoint_every, "),
])
def test_a_json_config_s_fields_are_checked_as_overrides_are(tmp_path, change, message):
  config = tiny.get_config("sr_x2").to_dict()
  for key, value in change.items():
    config[key] = dict(config[key], **value) if isinstance(value, dict) else value
  path = tmp_path / "run_config.json"
  path.write_text(json.dumps(config))
  out = _launch(f"--config={path}", f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 1 and out.stderr.startswith(f"error: {path}: {message}"), out.stderr
  assert out.stderr.count("\n") == 1 and not (tmp_path / "w").exists()


def test_overrides_without_a_config_file_say_it_is_missing(tmp_path):
  out = _launch(f"--workdir={tmp_path / 'w'}", "--config.total_steps=8")
  assert out.returncode == 1 and out.stderr == (
      "error: --config=<config file> is missing: the --config.<field> overrides apply to it "
      "(e.g. --config=experiments/tiny.py)\n")


def test_a_run_s_saved_run_config_json_is_taken_as_its_config_file(tmp_path):
  # what a study writes for each run, in a sweep's folder: '=' and ',' are the path's own
  (tmp_path / "lr=1e-3,seed=0").mkdir()
  path = tmp_path / "lr=1e-3,seed=0" / "run_config.json"
  path.write_text(json.dumps(tiny.get_config("sr_x2").to_dict()))
  out = _launch(f"--config={path}", "--config.total_steps=7", f"--workdir={tmp_path / 'w'}",
                "--dry_run")
  assert out.returncode == 0, out.stderr[-2000:]  # not run as Python (JSON's `false`)
  assert "  tasks = ['sr_x2']" in out.stdout and "  total_steps = 7" in out.stdout
  # Already read through from_json.py (a study's run commands): left as it is.
  through = f"--config={ROOT}/experiments/from_json.py:{path}"
  assert cli.json_config(["train.py", through]) == ["train.py", through]
  assert from_json.get_config(str(path)).tasks == from_json.get_config(f"path={path}").tasks


@pytest.mark.parametrize("config, message", [
    ("experiments/tiny.py:foo=1", "experiments/tiny.py has no argument 'foo'; valid: tasks"),
    ("experiments/nope.py", "--config=experiments/nope.py: [Errno 2] No such file or directory: "
                            "'experiments/nope.py'"),
    ("experiments", "--config=experiments: [Errno 21] Is a directory: 'experiments'"),
    ("/no/such/run_config.json", "--config=/no/such/run_config.json: [Errno 2] No such file or "
                                 "directory: '/no/such/run_config.json'"),
    # these were tracebacks of 40-50 lines
    ("README.md", "--config=README.md is not a Python config file (SyntaxError: "),
    ("experiments/__init__.py", "--config=experiments/__init__.py defines no get_config(); a "
                                "config file is Python whose get_config() returns the config "
                                "(e.g. experiments/tiny.py)"),
    ("experiments/studies/mini.py:gpu", "--config=experiments/studies/mini.py is a study's config "
                                        "(it has regimes); run it with launch/study.py, or give a "
                                        "run's config (e.g. experiments/tiny.py)"),
])
def test_a_bad_config_file_argument_is_one_line(tmp_path, config, message):
  out = _launch(f"--config={config}", f"--workdir={tmp_path / 'w'}")
  assert out.returncode == 1 and "Traceback" not in out.stderr
  [line] = out.stderr.strip().splitlines()
  assert line == f"error: {message}" or message.endswith(": ") and line.startswith(
      f"error: {message}")
  assert not (tmp_path / "w").exists()



def test_a_study_s_folder_is_no_run_s_workdir(tmp_path):
  # the run's files went in beside study.json, unnoticed by the study and its report
  (tmp_path / "study.json").write_text("{}")
  out = _launch("--config=experiments/tiny.py", f"--workdir={tmp_path}", "--dry_run")
  assert out.returncode == 1 and out.stderr == (
      f"error: --workdir={tmp_path} is a study's folder (it holds study.json); give a run a "
      "folder of its own\n")
  assert os.listdir(tmp_path) == ["study.json"]


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="torch is installed")
def test_the_torch_peer_without_torch_is_one_line():
  # run with mtl's python (no torch, by design): a 6-line ModuleNotFoundError traceback
  out = subprocess.run([sys.executable, "launch/torch_peer.py", "--ipt_repo=/nope"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
  assert out.returncode == 1 and out.stderr == (
      "error: No module named 'torch'; run this with a python that has torch (a side "
      "environment)\n")

LAUNCHERS = sorted(n for n in os.listdir(os.path.join(ROOT, "launch"))
                   if n.endswith(".py") and n not in ("_root.py", "cli.py"))


@pytest.mark.parametrize("flag", ["--help", "--helpfull"])
def test_every_launcher_s_help_exits_zero(flag):
  # absl exits 1 after printing help; a user who asked for it got it. A bad flag still fails.
  assert len(LAUNCHERS) >= 10
  for name in LAUNCHERS if flag == "--help" else ["score.py"]:
    proc = subprocess.run([sys.executable, os.path.join("launch", name), flag], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--" in proc.stdout, (name, proc.stderr[-500:])  # its flags
  bad = subprocess.run([sys.executable, "launch/score.py", "--no_such_flag"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode == 1 and "no_such_flag" in bad.stderr


ABSL_LAUNCHERS = ["analyze.py", "benchmark.py", "import_ipt.py", "ipt_published.py", "report.py",
                  "restore.py", "score.py", "study.py", "train.py"]


def test_every_absl_launcher_s_bad_flag_is_one_line():
  """absl's own parse error is two lines ('FATAL Flags parsing error', 'Pass --helpshort ...');
  cli.parse_flags makes it one, as the cluster launchers' (cli.run)."""
  for name, args, line in [
      ("analyze.py", ["--window=-3"], "error: flag --window=-3: -3 is not a non-negative integer"),
      ("benchmark.py", ["--precision=float16"],
       "error: flag --precision=float16: value should be one of <float32|bfloat16>"),
      ("study.py", ["--config=experiments/studies/mini.py", "--config.seedz=1"],
       "error: unknown config field 'seedz' in --config.seedz=1; the config has: budget,"),
      # nan passes absl's bounds (every comparison with it is false): refused by parse_flags
      ("analyze.py", ["--workdir=.", "--ema_beta=nan"],
       "error: --ema_beta=nan is not a number; give a finite value"),
      ("report.py", ["--workdir="], "error: flag --workdir=: --workdir is empty; give a path")]:
    proc = subprocess.run([sys.executable, os.path.join("launch", name), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, (name, proc.stderr[-1500:])
    assert proc.stderr.startswith(line), (name, proc.stderr)
  for name in ABSL_LAUNCHERS:
    proc = subprocess.run([sys.executable, os.path.join("launch", name), "--no_such_flag"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr == (
        "error: unknown flag --no_such_flag; --help lists the flags\n"), (name, proc.stderr)


def test_help_config_lists_every_field_with_its_value_and_meaning():
  from mtl import files, run_defaults
  fields = files.flatten(run_defaults.get_config().to_dict())
  undocumented = sorted(set(fields) - set(run_defaults.FIELD_HELP))
  assert not undocumented, f"mtl/run_defaults.py FIELD_HELP lacks {undocumented}"
  proc = _launch("--config=experiments/tiny.py", "--config.optim.lr=0.01", "--help_config")
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert len(lines) == len(fields)
  lr = next(l for l in lines if l.startswith("optim.lr = "))
  assert lr.split() == ["optim.lr", "=", "0.01", "peak", "learning", "rate", "(Adam)"]
  assert all(len(l.split("  ")) > 1 and l.split("  ")[-1].strip() for l in lines), lines


def test_another_run_s_checkpoints_are_refused_before_anything_is_written(tmp_path):
  """A run's checkpoints/ folder given as the workdir, and a workdir holding another run's
  checkpoints/ but no config.json (a different lr would resume them unchecked): one line each."""
  args = ["--config=experiments/tiny.py:sr_x2", "--config.mesh.data=1",
          "--config.total_steps=2", "--config.checkpoint_every=2", "--config.conflicts.every=0",
          "--config.eval.max_images=1", "--config.eval.max_side=48"]
  out = _launch(*args, f"--workdir={tmp_path / 'run'}")
  assert out.returncode == 0, out.stderr[-2000:]
  shutil.copytree(tmp_path / "run" / "checkpoints", tmp_path / "other" / "checkpoints")
  for workdir, message in (
      (tmp_path / "run" / "checkpoints", f"error: --workdir={tmp_path}/run/checkpoints holds "
       "checkpoint steps (2): it looks like a run's checkpoints/ folder; point --workdir to its "
       "parent"),
      (tmp_path / "other", f"error: --workdir={tmp_path}/other holds saved steps (2 in "
       "checkpoints/) but no config.json, so their config cannot be checked; use a new "
       "--workdir, or put back the config.json of the run that saved them")):
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    out = _launch(*args, f"--workdir={workdir}", "--config.optim.lr=1e-4")
    assert out.returncode == 1 and out.stderr == message + "\n", out.stderr[-2000:]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
