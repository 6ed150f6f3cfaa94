"""The main job: a tiny 3-task IPT (denoise_30, sr_x2, derain) on the embedded photographs.

Trains jointly (every task every step), measures task conflicts every step, evaluates on the
photographs' test split and prints the per-task PSNR table; minutes on 2 CPU cores.

  python launch/train.py --config=experiments/tiny.py --workdir=/tmp/mtl/tiny

Argument (mtl/run_defaults.py's convention): tasks=<task+task+...> replaces the task list:
  python launch/train.py --config=experiments/tiny.py:tasks=sr_x2+sr_x3+sr_x4 --workdir=/tmp/mtl/sr
(the short form `tiny.py:sr_x2,sr_x3,sr_x4` means the same).
"""
from mtl import run_defaults


def get_config(arg=None):
  args = run_defaults.parse_arg(arg, "experiments/tiny.py", "tasks", tasks="")
  config = run_defaults.get_config("tiny")
  if args["tasks"]:
    config.tasks = run_defaults.split_list(args["tasks"])
  config.data.batch_size = 4   # more, smaller steps learn faster in a CPU-minutes budget
  config.total_steps = 800
  config.optim.lr = 3e-3          # sr_x2 alone, 300 steps: 1e-3 28.9 dB, 3e-3 32.1, 5e-3 32.3, 1e-2 diverges
  config.optim.final_lr_ratio = 0.01
  config.eval.max_side = 256   # centre crops keep the CPU evaluation short
  # Conflicts every step on the training batch's halves (free); a probe batch of its own
  # (--config.conflicts.batch_size=16 --config.conflicts.every=4) makes every tenth of the run
  # measurable for ~1.65x the wall time (README "Conflicts").
  return config
