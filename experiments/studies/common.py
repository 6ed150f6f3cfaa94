"""Pieces study configs share: the tiny run of CPU studies on the embedded photographs."""
from mtl import run_defaults


def tiny_run():
  """Tiny IPT, batch 4 per task, conflicts every 10 steps, photos (test) and photos_val."""
  run = run_defaults.get_config("tiny")
  run.data.batch_size = 4
  run.optim.warmup_steps = 30
  run.log_every = 20
  run.checkpoint_every = 120
  run.conflicts.every = 10
  run.eval.sets = "photos,photos_val"
  run.eval.max_side = 128             # centre crops keep the CPU evaluation short
  return run
