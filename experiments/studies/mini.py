"""The mini study: scratch vs joint vs fine-tune for 3 tasks on the embedded photographs.

  python launch/study.py --config=experiments/studies/mini.py --workdir=/tmp/mtl/mini
  python launch/report.py --workdir=/tmp/mtl/mini

Tiny IPT, tasks denoise_30, sr_x2, derain, 2 seeds: 6 scratch runs, 4 joint runs (two
learning rates), 6 fine-tunes from the joint run chosen on the validation photograph
(photos_val); test on the photographs' test split (photos). Budgets: joint 240 steps,
fine-tune 60, scratch 300 (equal_compute: as many steps as joint + fine-tune), batch 4 per
task. 16 runs in 22m35s on 2 otherwise idle cores (2026-11-28), a third of it JAX start-up,
compilation and evaluation. Too short for sr_x2 to beat bicubic: it shows the pipeline and
the direction of transfer, not converged numbers.
"""
from experiments.studies import common
from mtl import study as study_lib


def get_config(arg=None):
  del arg
  study = study_lib.defaults()
  study.name = "mini"
  study.tasks = ("denoise_30", "sr_x2", "derain")
  study.regimes = ("scratch", "joint", "finetune")
  study.seeds = (0, 1)
  study.steps.joint = 240
  study.steps.finetune = 60
  study.equal_compute = True          # scratch: 240 + 60 steps
  study.lrs.scratch = (3e-3,)         # the best of 1e-3, 3e-3, 5e-3, 1e-2 for sr_x2 alone
  study.lrs.joint = (3e-3, 1e-3)
  study.lrs.finetune = (1e-3,)
  study.per_regime.finetune = {"optim": {"warmup_steps": 10}}

  run = common.tiny_run()
  study.run = run
  study.validation = "photos_val"
  study.test = ("photos",)
  return study
