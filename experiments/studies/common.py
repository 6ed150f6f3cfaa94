"""Pieces study configs share: the tiny run of CPU studies on the embedded photographs, and the
CPU schedule long enough that every task beats its degraded input (sr_x2 over bicubic too)."""
from mtl import run_defaults


def tiny_run():
  """Tiny IPT, batch 4 per task, conflicts every 10 steps, photos (test) and photos_val; one
  XLA CPU thread per run."""
  run = run_defaults.get_config("tiny")
  # A CPU run's numbers depend on its thread count: one each, as --max_parallel=2 on 2 cores
  # gives them, whatever the scheduling, --max_parallel or the machine's cores (on a GPU: moot).
  run.cpu_threads = 1
  run.data.batch_size = 4
  run.optim.warmup_steps = 30
  run.log_every = 20
  run.checkpoint_every = 120
  run.conflicts.every = 10
  run.eval.sets = "photos,photos_val"
  run.eval.max_side = 128             # centre crops keep the CPU evaluation short
  return run


def converged_schedule(study, pretraining, scale=1, batches=12, lrs=(3e-3, 5e-3)):
  """The tiny run pre-trained for 600 * scale steps (regime `pretraining`: 'joint' or 'groups'),
  fine-tuned for 150 * scale, scratch for as many images of its task (750 * scale; budget
  'equal_images'); the pre-training's lr grid `lrs` (3e-3, 5e-3: sr_x2 alone at 300 steps reached
  32.1 and 32.3 dB, 1e-3 28.9, 1e-2 diverged); scratch's and the fine-tune's grids below.
  Question 1 is measured at each seed's chosen pre-training run's last 4 checkpoints (25 *
  scale steps apart), each on `batches` fresh batches of 128/task: the conflict moves between
  nearby checkpoints by more than a few batches' noise (README, Conflicts)."""
  setattr(study.steps, pretraining, 600 * scale)
  study.steps.finetune = 150 * scale
  study.budget = "equal_images"
  study.lrs = lrs
  # Grids that bracket scratch's and the fine-tunes' best lrs: with the one grid above, every
  # sweep chose 3e-3, its end, and the fine-tunes lost to scratch by up to 0.3 dB; with wider
  # grids the fine-tunes chose 5e-4 to 2e-3 and scratch sr_x2 2e-3, which 1e-3 then bracketed
  # on every seed of the mini study (README, Studies).
  study.lrs_override.scratch = (1e-3, 2e-3, 3e-3, 5e-3)
  study.lrs_override.finetune = (5e-4, 1e-3, 2e-3)
  study.per_regime.finetune = {"optim": {"warmup_steps": 10}}
  setattr(study.per_regime, pretraining,
          {"checkpoint_every": 25 * scale, "keep_checkpoints": 4})
  study.run = tiny_run()
  study.run.checkpoint_every = 150 * scale
  study.validation = "photos_val"
  study.test = ("photos",)
  f = study.final_conflicts
  f.batch_size, f.halfwidth, f.max_batches, f.checkpoints = 128, 0.0, batches, 4
  return study
