"""The mini study: scratch vs joint vs fine-tune for 2 tasks on the embedded photographs, long
enough that every task beats its degraded input in every regime (sr_x2 over bicubic too), in
about an hour on 2 CPU cores.

  python launch/study.py --config=experiments/studies/mini.py --workdir=/tmp/mtl/mini \
      --max_parallel=2
  python launch/report.py --workdir=/tmp/mtl/mini
  python launch/study.py --config=experiments/studies/mini.py:gpu --workdir=/ckpt/mini  # one GPU

Tiny IPT, tasks sr_x2 and derain, seeds 0, 1, 2 (paired across regimes: every Δ in the tables
gets a paired 95% interval over them). lr grids, each bracketing its regime's best lr: joint
2e-3, 3e-3, 5e-3 (sr_x2 alone at 300 steps reached 32.1 dB at 3e-3, 32.3 at 5e-3, 28.9 at
1e-3, and diverged at 1e-2); scratch 1e-3, 2e-3, 3e-3, 5e-3 (at 750 steps scratch sr_x2 chose
2e-3 on every seed, 1e-3 and 3e-3 below it); fine-tunes 5e-4, 1e-3, 2e-3 (with one grid 3e-3,
5e-3 for all, 19 of 21 sweeps chose its end, 3e-3, and the fine-tunes were handicapped: README,
Studies); each chosen per seed on the validation photographs (photos_val: the motorcycle
stereo pair, which no training or test photograph shares); test on the photographs' test split
(photos). Budgets: joint 600 steps (conflicts probed every 10), fine-tune 150, scratch 750
(budget 'equal_images': as many images of its task as joint + fine-tune), batch 4 per task.
Once a seed's joint sweep is done, its chosen run's conflicts are measured at its last 4
checkpoints (steps 525, 550, 575, 600), each on 12 fresh batches of 128 images per task: their
mean per seed, combined over the seeds, is question 1's answer. 51 runs, then 12 conflict
measurements (README, Studies, gives the wall time).

Two tasks, not three: with denoise_30 as well (--config.tasks="('denoise_30','sr_x2','derain')":
72 runs) the study took 1h22m on 2 cores, over the hour; its figures are in the README.

With the argument `gpu`: the same study 2x longer (joint 1200, fine-tune 300 steps), sized for
10 minutes on one GPU from the tiny main job's ~108 steps/s on an H200 (the rest is the runs'
start-up and evaluation); launch/gpu_study.sh resumes it if its budget cuts it. Not yet run on
a GPU.
"""
from experiments.studies import common
from mtl import run_defaults
from mtl import study as study_lib


def get_config(arg=None):
  args = run_defaults.parse_arg(arg, "experiments/studies/mini.py", "device", device="cpu")
  if args["device"] not in ("cpu", "gpu"):
    raise ValueError(f"mini.py:{args['device']}; valid: mini.py (2 CPU cores) or mini.py:gpu")
  study = study_lib.defaults()
  study.name = "mini"
  study.tasks = ("sr_x2", "derain")
  study.regimes = ("scratch", "joint", "finetune")
  study.seeds = (0, 1, 2)
  return common.converged_schedule(study, "joint", scale=2 if args["device"] == "gpu" else 1,
                                   lrs=(2e-3, 3e-3, 5e-3))
