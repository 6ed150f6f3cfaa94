"""The mini study: scratch vs joint vs fine-tune for 3 tasks on the embedded photographs.

  python launch/study.py --config=experiments/studies/mini.py --workdir=/tmp/mtl/mini
  python launch/report.py --workdir=/tmp/mtl/mini

Tiny IPT, tasks denoise_30, sr_x2, derain, seeds 0, 1, 2 (paired across regimes: every Δ in
the tables gets a paired 95% interval over them). One lr grid for every regime (1e-3, 3e-3),
chosen per seed on the validation photographs (photos_val: the motorcycle stereo pair, which no
training or test photograph shares); test on the photographs' test split (photos). Budgets:
joint 100 steps, fine-tune 20, scratch 120 (budget 'equal_images': as many images of its task
as joint + fine-tune), batch 4 per task. 42 runs per study: per seed 6 scratch, 2 joint, 6
fine-tunes. Estimated ~25 min on 2 otherwise idle cores (from 2026-11-28 per-run times: ~20 s
of start-up, compilation and evaluation per run, 0.17 s per scratch / fine-tune step, 0.54 s
per joint step with its conflict probes); not yet timed. Far too short to converge (sr_x2 does
not beat bicubic: the report warns): it shows the pipeline and the statistics, not results.
"""
from experiments.studies import common
from mtl import study as study_lib


def get_config(arg=None):
  del arg
  study = study_lib.defaults()
  study.name = "mini"
  study.tasks = ("denoise_30", "sr_x2", "derain")
  study.regimes = ("scratch", "joint", "finetune")
  study.seeds = (0, 1, 2)
  study.steps.joint = 100
  study.steps.finetune = 20
  study.budget = "equal_images"       # scratch: 100 + 20 steps
  study.lrs = (1e-3, 3e-3)            # every regime; 3e-3 was best for sr_x2 alone at 300 steps
  study.per_regime.finetune = {"optim": {"warmup_steps": 5}}

  run = common.tiny_run()
  run.optim.warmup_steps = 20
  study.run = run
  study.validation = "photos_val"
  study.test = ("photos",)
  return study
