"""The seed question on the all-in-one 3-task setting (AirNet / PromptIR / AdaIR): do denoising
(sigma 15, 25, 50), deraining and dehazing help or hurt one another in a shared body?

  python launch/study.py --config=experiments/studies/allinone3.py --workdir=/tmp/mtl/allinone3
  python launch/study.py --config=experiments/studies/allinone3.py:/data --workdir=/ckpt/ai3
  python launch/report.py --workdir=/tmp/mtl/allinone3

Regimes: each task from scratch (equal compute: as many steps as joint + fine-tune), all five
jointly, each fine-tuned from the joint run, and every pair of tasks jointly (pairwise
transfer: which pairs pull apart). Without an argument: the tiny IPT on the embedded
photographs, every degradation synthesized, 2 seeds (CPU budgets: 10 scratch, 2 joint,
10 fine-tune, 20 pair runs). With a data root laid out as experiments/allinone3.py documents:
the small IPT with real Rain100L / OTS training pairs, tested on CBSD68, Rain100L and SOTS
outdoor, 3 seeds. The learning rate is chosen on the photographs' validation image
(photos_val, degraded synthetically), never on a test set. The report's reference row is
AdaIR's published RGB PSNR (compare it with the runs' psnr_rgb, not the Y-channel tables).
"""
from experiments import allinone3
from mtl import study as study_lib


def get_config(root=None):
  study = study_lib.defaults()
  study.name = "allinone3"
  study.tasks = allinone3.TASKS
  study.regimes = ("scratch", "joint", "finetune", "pairs")
  study.equal_compute = True
  run = allinone3.get_config(root)
  del run["published"]   # recorded in the report's reference row instead
  if root:
    study.seeds = (0, 1, 2)
    study.steps.joint = 300_000
    study.steps.finetune = 30_000
    study.lrs.scratch = (2e-4,)
    study.lrs.joint = (2e-4,)
    study.lrs.finetune = (5e-5,)
    study.per_regime.finetune = {"optim": {"warmup_steps": 500}}
    run.eval.sets += ",photos_val"
    study.test = ("CBSD68", "Rain100L", "SOTS")
  else:
    study.seeds = (0, 1)
    run.total_steps = 240
    run.optim.warmup_steps = 30
    run.log_every = 20
    run.checkpoint_every = 120
    run.conflicts.every = 10
    run.eval.sets = "photos,photos_val"
    run.eval.max_side = 128
    study.steps.joint = 240
    study.steps.finetune = 60
    study.lrs.scratch = (3e-3,)
    study.lrs.joint = (3e-3,)
    study.lrs.finetune = (1e-3,)
    study.per_regime.finetune = {"optim": {"warmup_steps": 10}}
    study.test = ("photos",)
  study.validation = "photos_val"
  study.run = run
  best = allinone3.PUBLISHED["AdaIR"]
  study.reference.label = "AdaIR (Cui et al. 2025)"
  study.reference.note = ("published RGB PSNR, blind all-in-one model, real Rain100L / SOTS test "
                          "pairs; compare with the psnr_rgb of runs on the same sets")
  if root:
    study.reference.psnr_y = {t: {s: best[t]} for t, s in zip(
        allinone3.TASKS, ("CBSD68", "CBSD68", "CBSD68", "Rain100L", "SOTS"))}
  return study
