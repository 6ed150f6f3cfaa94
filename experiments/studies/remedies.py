"""Acting on conflicts on CPU: joint training with gradient aggregators and a loss weighting
against plain summed joint training and scratch (tiny IPT, 3 tasks, 3 seeds).

  python launch/study.py --config=experiments/studies/remedies.py --workdir=/tmp/mtl/remedies \
      --max_parallel=2
  python launch/report.py --workdir=/tmp/mtl/remedies     # + tables/remedies.md

Regimes: scratch (each task alone), joint (sum of the task losses), joint:pcgrad (Yu et al.
2020), joint:cagrad (Liu et al. 2021), joint:upgrad (Quinton & Rey 2024), joint:uncertainty
(Kendall et al. 2018): every joint variant has the same steps, learning rate and seeds. The
aggregators take the per-task body gradients on every step (mtl.aggregators); every joint run
also records TAG affinity (Fifty et al. 2021) every 20 steps, and the three pair runs per seed
give the measured pairwise transfer the predictors table ranks the cosines and affinity against.
Each method runs with its defaults in mtl.aggregators: CAGrad c=0.5 (LibMTL's default), UPGrad
a uniform preference, uncertainty log-variances from -0.5; these are untuned, as is the lr:
one value, the same for every regime (one method's own arguments: per_regime['joint:cagrad'] =
{'mtl': {'aggregator_args': {'c': 0.4}}}; the remedies table names them).
Budget: 11 runs per seed, 33 runs of 120 steps (batch 4 per task). Measured 2026-12-06 on 2
cores with --max_parallel=2: 19 min wall (programs shared between runs: 63 compiled, 747 loaded
from the cache). Far too short for converged numbers (no regime beats bicubic on sr_x2): it
exercises the comparison and its paired intervals, not the answer.
"""
from experiments.studies import common
from mtl import study as study_lib

METHODS = ("pcgrad", "cagrad", "upgrad", "uncertainty")


def get_config(arg=None):
  if arg:
    raise ValueError(f"experiments/studies/remedies.py takes no argument (got {arg!r})")
  study = study_lib.defaults()
  study.name = "remedies"
  study.tasks = ("denoise_30", "sr_x2", "derain")
  study.regimes = ("scratch", "joint", "pairs") + tuple(f"joint:{m}" for m in METHODS)
  study.seeds = (0, 1, 2)
  study.steps.scratch = 120
  study.steps.joint = 120           # every joint:<method> run too
  study.lrs = (3e-3,)                # one grid for every regime
  run = common.tiny_run()
  run.optim.warmup_steps = 15
  run.checkpoint_every = 60
  run.mtl.affinity_every = 20
  study.run = run
  study.validation = "photos_val"
  study.test = ("photos",)
  return study
