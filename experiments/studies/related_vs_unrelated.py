"""EDT's question: does pre-training on related tasks help SR x2 more than on unrelated ones?

  python launch/study.py --config=experiments/studies/related_vs_unrelated.py \
      --workdir=/tmp/mtl/related
  python launch/study.py --config=experiments/studies/related_vs_unrelated.py:/data \
      --workdir=/ckpt/related
  python launch/report.py --workdir=/tmp/mtl/related

Two groups are pre-trained jointly from random init, related = SR x2 + x3 + x4 and
unrelated = SR x2 + denoise sigma 30; each is fine-tuned on sr_x2 and compared with sr_x2
trained from scratch for as many steps (equal_compute). The main table's columns
finetune:related and finetune:unrelated answer the question; the conflict table shows how the
tasks of each group pulled on the shared body.

Without an argument: tiny model on the embedded photographs, CPU budgets (10 runs; the
related group, with its x3 and x4 crops, is the slowest). With a data root holding
DIV2K/DIV2K_train_HR and benchmark/{Set5,Set14,B100,Urban100,DIV2K_val10}: the small model on
DIV2K, one-GPU budgets.
"""
import os

from experiments import base
from experiments.studies import common
from mtl import study as study_lib


def get_config(root=None):
  study = study_lib.defaults()
  study.name = "related_vs_unrelated"
  study.tasks = ("sr_x2",)
  study.regimes = ("scratch", "groups", "finetune")
  study.groups.related = ("sr_x2", "sr_x3", "sr_x4")
  study.groups.unrelated = ("sr_x2", "denoise_30")
  study.equal_compute = True
  study.seeds = (0, 1)
  if root:
    run = base.get_config("small")
    run.data.source, run.data.folder = "folder", os.path.join(root, "DIV2K", "DIV2K_train_HR")
    run.data.batch_size = 16
    run.precision = "bfloat16"
    run.optim.warmup_steps = 1000
    run.checkpoint_every = 2000
    run.log_every = 100
    run.conflicts.every = 50
    bench = os.path.join(root, "benchmark")
    run.eval.sets = ",".join(f"{n}={os.path.join(bench, n)}"
                             for n in ("Set5", "Set14", "B100", "Urban100", "DIV2K_val10"))
    study.steps.groups = 50_000
    study.steps.finetune = 10_000
    study.lrs.scratch = (2e-4, 5e-4)
    study.lrs.groups = (2e-4, 5e-4)
    study.lrs.finetune = (5e-5, 1e-4)
    study.per_regime.finetune = {"optim": {"warmup_steps": 200}}
    study.validation = "DIV2K_val10"
    study.test = ("Set5", "Set14", "B100", "Urban100")
  else:
    run = common.tiny_run()
    study.steps.groups = 240
    study.steps.finetune = 60
    study.lrs.scratch = (1e-3,)
    study.lrs.groups = (1e-3,)
    study.lrs.finetune = (3e-4,)
    study.per_regime.finetune = {"optim": {"warmup_steps": 10}}
    study.validation = "photos_val"
    study.test = ("photos",)
  study.run = run
  return study
