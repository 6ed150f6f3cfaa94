"""A study file as users write them, for the study and report tests (the argument picks a
variant), and `cli`: launch/study.py run as a user runs it."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli(*args, timeout=300):
  return subprocess.run([sys.executable, "launch/study.py", *args], cwd=ROOT, text=True,
                        capture_output=True, timeout=timeout)


MICRO_STUDY = '''
from mtl import run_defaults
from mtl import study as study_lib


def get_config(arg=""):
  study = study_lib.defaults()
  study.name = "micro"
  study.tasks = ("denoise_30", "derain")
  study.regimes = ("scratch", "joint", "finetune")
  # One seed: this real study checks the plumbing end to end and stays short; the statistics
  # over seeds are tested on synthetic study directories (tests/test_report.py).
  study.seeds = (0,)
  study.steps.scratch = study.steps.joint = study.steps.finetune = 4
  study.lrs = (1e-3,)
  run = run_defaults.get_config("tiny")
  run.data.batch_size = 2
  run.optim.warmup_steps = 0
  run.log_every = run.checkpoint_every = 2
  run.conflicts.every = 1
  run.eval.sets = "photos,photos_val"
  run.eval.max_side, run.eval.max_images = 64, 1
  study.run = run
  # The joint run's last two checkpoints (steps 2 and 4), 3 fresh batches each
  study.final_conflicts.batch_size, study.final_conflicts.checkpoints = 2, 2
  study.final_conflicts.halfwidth, study.final_conflicts.max_batches = 0.0, 3
  if arg == "kill":            # two scratch runs long enough to be interrupted
    study.tasks, study.regimes, study.seeds = ("denoise_30",), ("scratch",), (0, 1)
    study.steps.scratch = 20
    run.checkpoint_every, run.log_every = 5, 5
  elif arg == "reference":     # a published reference row for the report
    study.reference.label = "published"
    study.reference.psnr_y = {"derain": {"photos": 40.0}}
  elif arg == "bad_field":
    study.sedds = (0, 1)
  elif arg == "no_tasks":
    study.tasks = ()
  elif arg == "bad_regime":
    study.regimes = ("scratch", "jiont")
  return study
'''
