"""A one-GPU IPT (n_feats 32, 2+2 layers, 4 heads) on a folder of clean images.

  python launch/train.py --config=experiments/small.py:folder=/data/DIV2K/DIV2K_train_HR \
      --workdir=/ckpt/small

Argument (mtl/run_defaults.py's convention): folder=<folder of clean images> (the short form
`small.py:/data/DIV2K/DIV2K_train_HR` means the same). Without it, the embedded photographs.
"""
from mtl import run_defaults


def get_config(arg=None):
  args = run_defaults.parse_arg(arg, "experiments/small.py", "folder", folder="")
  config = run_defaults.get_config("small")
  config.tasks = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50")
  if args["folder"]:
    config.data.source, config.data.folder = "folder", args["folder"]
  config.data.batch_size = 16
  config.total_steps = 100_000
  config.optim.lr = 2e-4
  config.optim.warmup_steps = 1000
  config.checkpoint_every = 2000
  config.log_every = 100
  config.eval_every = 10_000
  config.conflicts.every = 50
  config.conflicts.batch_size = 16  # its own probe batch, in float32 (not the bfloat16 gradients)
  config.precision = "bfloat16"
  return config
