"""EDT's question: does pre-training on related tasks help SR x2 more than on unrelated ones?

  python launch/study.py --config=experiments/studies/related_vs_unrelated.py \
      --workdir=/tmp/mtl/related
  python launch/study.py --config=experiments/studies/related_vs_unrelated.py:/data \
      --workdir=/ckpt/related
  python launch/study.py --config=experiments/studies/related_vs_unrelated.py:device=gpu \
      --workdir=/ckpt/related_gpu                 # one GPU, sized as mini.py:gpu
  python launch/report.py --workdir=/tmp/mtl/related

Two groups of the same size are pre-trained jointly from random init for the same steps,
related = SR x2 + x3 and unrelated = SR x2 + denoise sigma 30; each is fine-tuned on sr_x2 and
compared with sr_x2 trained from scratch at an equal budget. Each regime sweeps an lr grid that
brackets its best lr, chosen per seed on validation; 3 seeds, paired. The main table's columns
finetune:related and finetune:unrelated answer the question (each Δ vs scratch with its paired
interval); the conflict table shows how the tasks of each group pulled on the shared body.

Without an argument: tiny model on the embedded photographs, the mini study's CPU schedule
(experiments/studies/common.py): groups 600 steps, fine-tune 150, scratch 750 (budget
'equal_images': as many sr_x2 images as group pre-training + fine-tuning); lr grids: scratch
1e-3, 2e-3, 3e-3, 5e-3; groups 1e-3, 2e-3, 3e-3, 5e-3; fine-tunes 5e-4, 1e-3, 2e-3 (a fine-tune
wants a smaller lr: with the one grid 3e-3, 5e-3 every fine-tune chose 3e-3, its end, and scratch
looked 0.26 dB better; README, Studies): 54 runs; each seed's chosen group runs measured at their
last 4 checkpoints, each on 8 fresh batches of 128 per task (24 measurements). About 1h22m on 2
CPU cores with --max_parallel=2 (2026-12-06: without the groups' 1e-3, 48 runs in 55m11s and the
measurements in 15m19s, 1h10m30s in one piece; the six group runs at 1e-3 took 3m27s-4m09s each).
Every regime beats bicubic. With `device=gpu`: the same study 2x longer, as mini.py:gpu (not yet
run on a GPU).

With a data root holding DIV2K/DIV2K_train_HR and
benchmark/{Set5,Set14,B100,Urban100,DIV2K_val10}: the small model on DIV2K, one-GPU budgets,
budget 'equal_flops' (scratch runs as many training FLOPs as the fine-tune plus half of the
related group's pre-training, which trains two tasks; it runs after them).
"""
import os

from mtl import run_defaults
from experiments.studies import common
from mtl import study as study_lib


def get_config(arg=None):
  args = run_defaults.parse_arg(arg, "experiments/studies/related_vs_unrelated.py", "root",
                                root="", device="cpu")
  if args["device"] not in ("cpu", "gpu"):
    raise ValueError(f"related_vs_unrelated.py:device={args['device']}; valid: cpu (2 CPU "
                     "cores) or gpu (one GPU)")
  root = args["root"]
  study = study_lib.defaults()
  study.name = "related_vs_unrelated"
  study.tasks = ("sr_x2",)
  study.regimes = ("scratch", "groups", "finetune")
  study.groups.related = ("sr_x2", "sr_x3")
  study.groups.unrelated = ("sr_x2", "denoise_30")
  study.seeds = (0, 1, 2)
  if not root:
    # The groups chose 2e-3 or 3e-3; 1e-3 and 5e-3 scored below both on every seed (README)
    return common.converged_schedule(study, "groups", scale=2 if args["device"] == "gpu" else 1,
                                     batches=8, lrs=(1e-3, 2e-3, 3e-3, 5e-3))
  run = run_defaults.get_config("small")
  run.data.source, run.data.folder = "folder", os.path.join(root, "DIV2K", "DIV2K_train_HR")
  run.data.batch_size = 16
  run.precision = "bfloat16"
  run.optim.warmup_steps = 1000
  run.checkpoint_every = 2000
  run.log_every = 100
  run.conflicts.every = 50
  run.conflicts.batch_size = 16  # its own probe batch, in float32 (not the bfloat16 gradients)
  bench = os.path.join(root, "benchmark")
  run.eval.sets = ",".join(f"{n}={os.path.join(bench, n)}"
                           for n in ("Set5", "Set14", "B100", "Urban100", "DIV2K_val10"))
  study.steps.groups = 50_000
  study.steps.finetune = 10_000
  study.budget = "equal_flops"
  study.lrs = (1e-4, 2e-4, 5e-4)
  study.per_regime.finetune = {"optim": {"warmup_steps": 200}}
  study.validation = "DIV2K_val10"
  study.test = ("Set5", "Set14", "B100", "Urban100")
  study.run = run
  return study
