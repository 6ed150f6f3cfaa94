"""The mini study: scratch vs joint vs fine-tune for 3 tasks on the embedded photographs.

  python launch/study.py --config=experiments/studies/mini.py --workdir=/tmp/mtl/mini
  python launch/report.py --workdir=/tmp/mtl/mini

Tiny IPT, tasks denoise_30, sr_x2, derain, 2 seeds: 6 scratch runs, 4 joint runs (two
learning rates), 6 fine-tunes from the joint run chosen on the validation photograph
(photos_val); test on the photographs' test split (photos). Budgets: joint 300 steps,
fine-tune 100, scratch 400 (equal_compute: as many steps as joint + fine-tune). About 25
minutes on 2 CPU cores, most of it JAX start-up, compilation and evaluation.
"""
from experiments import base
from mtl import study as study_lib


def get_config(arg=None):
  del arg
  study = study_lib.defaults()
  study.name = "mini"
  study.tasks = ("denoise_30", "sr_x2", "derain")
  study.regimes = ("scratch", "joint", "finetune")
  study.seeds = (0, 1)
  study.steps.joint = 300
  study.steps.finetune = 100
  study.equal_compute = True          # scratch: 300 + 100 steps
  study.lrs.scratch = (1e-3,)
  study.lrs.joint = (1e-3, 3e-4)
  study.lrs.finetune = (3e-4,)
  study.per_regime.finetune = {"optim": {"warmup_steps": 10}}

  run = base.get_config("tiny")
  run.data.batch_size = 4
  run.optim.warmup_steps = 30
  run.log_every = 50
  run.checkpoint_every = 100
  run.conflicts.every = 10
  run.eval.sets = "photos,photos_val"
  run.eval.max_side = 192             # centre crops keep the CPU evaluation short
  study.run = run
  study.validation = "photos_val"
  study.test = ("photos",)
  return study
