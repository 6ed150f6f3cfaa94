"""IPT as published (Chen et al. 2021): 6 tasks, 118.9M parameters, ImageNet pre-training.

  python launch/train.py --config=experiments/ipt_paper.py:root=/data --workdir=/ckpt/ipt

Argument (mtl/run_defaults.py's convention): root=<data root> (the short form `ipt_paper.py:/data` means
the same; default /data), a data root holding imagenet/train (clean pre-training images) and the
benchmark folders benchmark/{Set5,Set14,B100,Urban100,CBSD68} (HR images) and
benchmark/Rain100L (rainy/clean pairs). Published protocol: one task per batch, batch 256,
Adam lr 5e-5 for 300 epochs, L1 + 0.1 x supervised contrastive loss (temperature 0.07).
"""
import os

from mtl import run_defaults

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config(arg=None):
  root = run_defaults.parse_arg(arg, "experiments/ipt_paper.py", "root", root="/data")["root"]
  config = run_defaults.get_config("paper")
  config.tasks = ("sr_x2", "sr_x3", "sr_x4", "derain", "denoise_30", "denoise_50")
  config.schedule = "one"                      # IPT draws one task per batch
  config.precision = "bfloat16"
  config.data.source = "folder"
  config.data.folder = os.path.join(root, "imagenet", "train")
  config.data.batch_size = 256
  config.loss.contrastive_weight = 0.1
  config.loss.temperature = 0.07
  config.optim.lr = 5e-5
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 0
  config.total_steps = 300 * IMAGENET_TRAIN_IMAGES // 256
  config.log_every = 100
  config.checkpoint_every = 5000
  config.keep_checkpoints = 3
  config.eval_every = 50_000
  bench = os.path.join(root, "benchmark")
  config.eval.sets = ",".join(
      [f"{name}={os.path.join(bench, name)}" for name in ("Set5", "Set14", "B100", "Urban100",
                                                          "CBSD68")]
      + [f"Rain100L=paired:{os.path.join(bench, 'Rain100L')}"])
  config.eval.tile_batch = 256
  config.conflicts.every = 0                   # schedule 'one': no two tasks share a step
  config.mesh.fsdp = 1                         # raise on small-memory devices to shard the body
  return config
