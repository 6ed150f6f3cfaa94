"""The seed question on the all-in-one 3-task setting (AirNet / PromptIR / AdaIR): do denoising
(sigma 15, 25, 50), deraining and dehazing help or hurt one another in a shared body?

  python launch/study.py --config=experiments/studies/allinone3.py --workdir=/tmp/mtl/allinone3
  python launch/study.py --config=experiments/studies/allinone3.py:/data --workdir=/ckpt/ai3
  python launch/report.py --workdir=/tmp/mtl/allinone3

Regimes: each task from scratch (budget equal_images: as many target-task images as joint +
fine-tune), all five jointly, each fine-tuned from the joint run, and every pair of tasks jointly
(pairwise transfer: which pairs pull apart); one learning-rate grid for every regime, chosen per
seed on the photographs' validation images (photos_val, degraded synthetically), never on a test
set; 3 seeds; tables in RGB PSNR as these papers report it (study.metric). Without an argument:
the tiny IPT on the embedded photographs, every degradation synthesized. With a data root laid out
as experiments/allinone3.py documents: the small IPT with real Rain100L / OTS training pairs,
tested on CBSD68, Rain100L and SOTS outdoor, with PromptIR's published RGB PSNR as the main
table's reference row (AirNet's and AdaIR's are in experiments/allinone3.py, PUBLISHED).
"""
from experiments import allinone3
from experiments.studies import common
from mtl import run_defaults
from mtl import study as study_lib
from mtl import tasks as tasks_lib


def get_config(arg=None):
  root = run_defaults.parse_arg(arg, "experiments/studies/allinone3.py", "root", root="")["root"]
  study = study_lib.defaults()
  study.name = "allinone3"
  study.tasks = allinone3.TASKS
  study.regimes = ("scratch", "joint", "finetune", "pairs")
  study.budget = "equal_images"
  study.metric = "psnr_rgb"           # the all-in-one papers report RGB PSNR / SSIM
  study.seeds = (0, 1, 2)
  run = allinone3.get_config(root)
  del run["published"]   # the papers' numbers stay in experiments/allinone3.py
  if root:
    study.steps.joint = 300_000
    study.steps.finetune = 30_000
    study.lrs = (1e-4, 2e-4)
    study.per_regime.finetune = {"optim": {"warmup_steps": 500}}
    run.eval.sets += ",photos_val"
    study.test = ("CBSD68", "Rain100L", "SOTS")
    study.reference.label = "PromptIR (published)"
    study.reference.note = ("Potlapalli et al., NeurIPS 2023, the three-degradation all-in-one "
                            "table (RGB PSNR): trained blind on 128 x 128 crops; its SSIM is "
                            "scikit-image's, so none is shown.")
    test_set = {"denoise": "CBSD68", "derain": "Rain100L", "dehaze": "SOTS"}
    promptir = allinone3.PUBLISHED["PromptIR"]
    study.reference.psnr_rgb = {t: {test_set[tasks_lib.get(t).kind]: promptir[t]}
                                for t in study.tasks}
  else:
    tiny = common.tiny_run()
    run.total_steps = 240
    for field in ("optim", "log_every", "checkpoint_every", "conflicts", "eval"):
      run[field] = tiny[field]
    study.steps.joint = 240
    study.steps.finetune = 60
    study.lrs = (1e-3, 3e-3)
    study.per_regime.finetune = {"optim": {"warmup_steps": 10}}
    study.test = ("photos",)
  study.validation = "photos_val"
  study.run = run
  return study
