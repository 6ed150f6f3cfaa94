"""IPT's setting as a study: 6 tasks, paper-size model, ImageNet pre-training, DIV2K fine-tuning.

  python launch/study.py --config=experiments/studies/ipt_paper.py:/data --workdir=/ckpt/ipt_study
  python launch/study.py ... --only='joint-*'     # e.g. one cluster job per run (see --dry_run)
  python launch/report.py --workdir=/ckpt/ipt_study

The argument is a data root holding
  imagenet/train/                  clean pre-training images (the joint runs)
  DIV2K/DIV2K_train_HR/            clean training images of the scratch runs and the fine-tunes
  benchmark/DIV2K_val10/           validation: DIV2K 0801-0810 HR (lr selection only)
  benchmark/{Set5,Set14,B100,Urban100,CBSD68}/   HR test images
  benchmark/Rain100L/              rainy / clean test pairs (derain only)

Regimes: scratch (each task alone on DIV2K), joint (all 6 tasks every step on ImageNet: the EDT
form, so task conflicts are measured at the same parameters; IPT itself drew one task per
batch), finetune (each task on DIV2K from the joint run chosen on validation). Budgets, for a
node of 8 80-GB GPUs or a TPU v4-32 slice, bfloat16, 64 images per task per step: joint 200k
steps (77M images, a fifth of IPT's 300 ImageNet epochs), fine-tune 30k, scratch 230k
(budget 'equal_images': as many images of its task as joint + fine-tune). One lr grid for
every regime (5e-5, 1e-4, 2e-4; IPT used 5e-5 pre-training, 2e-5 fine-tuning), chosen per
seed on DIV2K_val10: 3 seeds x 13 sweeps x 3 lrs = 117 runs. Published IPT numbers appear as
a reference row; its Rain100L (derain) number only when derain trains on real streak layers
(--config.run.degrade.rain.streak_dir=<RainTrainL streaks>, as IPT did): on procedural rain it
would compare different training data.
Lower the budgets with e.g. --config.steps.joint=20000 --config.steps.finetune=3000.
"""
import os

from experiments import ipt_paper
from mtl import published
from mtl import run_defaults
from mtl import study as study_lib

TASKS = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50")
TEST_SETS = ("Set5", "Set14", "B100", "Urban100", "CBSD68", "Rain100L")


def get_config(arg=None):
  root = run_defaults.parse_arg(arg, "experiments/studies/ipt_paper.py", "root",
                              root="/data")["root"]
  study = study_lib.defaults()
  study.name = "ipt_paper"
  study.tasks = TASKS
  study.regimes = ("scratch", "joint", "finetune")
  study.seeds = (0, 1, 2)
  study.steps.joint = 200_000
  study.steps.finetune = 30_000
  study.budget = "equal_images"
  study.lrs = (5e-5, 1e-4, 2e-4)            # IPT: 5e-5 at batch 256 (pre-training)

  run = ipt_paper.get_config(root)          # paper size, bfloat16, L1 + 0.1 contrastive
  run.schedule = "all"                      # every task every step: conflicts are measurable
  run.data.batch_size = 64                  # per task: 384 images per joint step
  run.optim.schedule = "cosine"
  run.optim.warmup_steps = 2000
  run.checkpoint_every = 5000
  run.eval_every = 0
  run.conflicts.every = 100
  run.conflicts.batch_size = 64  # its own probe batch, in float32 (not the bfloat16 gradients)
  bench = os.path.join(root, "benchmark")
  run.eval.sets = run.eval.sets + f",DIV2K_val10={os.path.join(bench, 'DIV2K_val10')}"
  study.run = run
  div2k = {"source": "folder", "folder": os.path.join(root, "DIV2K", "DIV2K_train_HR")}
  study.per_regime.scratch = {"data": div2k}
  study.per_regime.finetune = {"data": div2k, "optim": {"warmup_steps": 500}}
  study.validation = "DIV2K_val10"
  study.test = TEST_SETS

  study.reference.label = "IPT (published)"
  study.reference.note = ("Chen et al., CVPR 2021, Tables 1-3, Y-channel PSNR; the denoise values "
                          "are not checked against a copy of the paper.")
  study.reference.psnr_y = {task: dict(published.PUBLISHED[task]) for task in TASKS}
  # IPT trained derain on real rain streaks (Rain100L's training layers); shown only then.
  study.reference.requires = {"derain": "degrade.rain.streak_dir"}
  return study
