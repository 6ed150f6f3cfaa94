"""Acting on conflicts on one GPU: 6 tasks, every aggregator and loss weighting of
mtl.aggregators as a joint regime, the pairwise-transfer runs the predictors table needs, and
scratch, over 3 seeds (small IPT, bfloat16).

  python launch/study.py --config=experiments/studies/remedies_gpu.py:/data/DIV2K/DIV2K_train_HR \\
      --workdir=/ckpt/remedies
  python launch/report.py --workdir=/ckpt/remedies       # tables/remedies.md, predictors.md

Without an argument it trains on the embedded photographs. Regimes: scratch, joint (sum),
joint:<m> for the 9 aggregators and 4 loss weightings, pairs (15 pair runs: the measured
transfer). The plain joint runs probe conflicts with half-batch Gramians where the trainer
stores them (noise-corrected cosine) and TAG affinity every 100 steps. 3 seeds x (6 + 14 + 15)
= 105 runs of 20k steps; not timed (size it with launch/benchmark.py's aggregator ratios).
Every method runs with its defaults in mtl.aggregators (e.g. CAGrad c=0.5, GradVac beta=0.5,
Nash-MTL max_norm 1, DWA T=2 over 100-step epochs, FAMO lr 0.025), untuned; so is the lr (one
value for every regime).
"""
from experiments import small
from mtl import aggregators
from mtl import study as study_lib

METHODS = tuple(sorted(set(aggregators.WEIGHTINGS) - {"sum"})) + tuple(
    sorted(aggregators.LOSS_WEIGHTINGS))


def get_config(folder=None):
  study = study_lib.defaults()
  study.name = "remedies_gpu"
  study.tasks = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50")
  study.regimes = ("scratch", "joint") + tuple(f"joint:{m}" for m in METHODS) + ("pairs",)
  study.seeds = (0, 1, 2)
  study.steps.scratch = 20_000
  study.steps.joint = 20_000        # every joint:<method> and pair run too
  study.lrs = (2e-4,)               # one grid for every regime
  run = small.get_config(folder)
  run.total_steps = 20_000
  run.optim.warmup_steps = 500
  run.eval_every = 0
  run.checkpoint_every = 2000
  run.mtl.affinity_every = 100
  run.eval.sets = "photos,photos_val"
  run.eval.max_side = 256
  study.run = run
  study.validation = "photos_val"
  study.test = ("photos",)
  return study
