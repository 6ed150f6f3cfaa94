"""Every field a run reads, with its default. Config files in experiments/ start from
`run_defaults.get_config()` and override what they change.

Not a run by itself: see experiments/tiny.py, small.py, ipt_paper.py. Config files take their argument in
one convention (big_vision's): `--config=experiments/FILE.py:key=value,key=value`, with `+`
between the items of a list value (`tiny.py:tasks=sr_x2+sr_x3`); a bare value without `=`
sets the file's main key (`tiny.py:sr_x2,sr_x3` still works). `parse_arg` reads it.
"""
import ml_collections

from mtl.models import ipt


def parse_arg(arg, file, main, **defaults):
  """`key=value,...` (or a bare value for key `main`) -> dict of `defaults` updated; ValueError
  (one line) for an unknown key or a piece without `=`."""
  out = dict(defaults)
  if not arg:
    return out
  if "=" not in arg:  # the short form: the whole argument is the main key's value
    out[main] = arg
    return out
  for piece in arg.split(","):
    key, eq, value = piece.partition("=")
    if not eq:
      raise ValueError(f"{file} argument piece {piece!r} has no '='; use key=value pairs "
                       f"separated by ',' and '+' between list items (keys: {', '.join(defaults)})")
    if key not in defaults:
      raise ValueError(f"{file} has no argument {key!r}; valid: {', '.join(defaults)}")
    out[key] = value
  return out


def split_list(value):
  """'a+b', 'a,b' -> ('a', 'b'); empty items dropped."""
  return tuple(v.strip() for v in value.replace("+", ",").split(",") if v.strip())


def get_config(size="tiny"):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.tasks = ("denoise_30", "sr_x2", "derain")
  c.regime = "joint"          # scratch | joint | finetune
  c.schedule = "all"          # all: every task every step (EDT); one: one task per step (IPT)
  c.init_from = ""            # finetune: workdir of the joint run to start from
  c.precision = "float32"     # float32 | bfloat16 (compute dtype; parameters stay float32)

  c.model = ml_collections.ConfigDict(ipt.SIZES[size])
  c.model.init = "torch"      # torch: as the official IPT code initialises | flax: nnx defaults
  c.model.remat = "none"      # none | layer: recompute each encoder/decoder layer in the backward
  # The step's T task (probe: 2T half-batch) body calls: auto (one batched computation on GPUs
  # and TPUs, one call each on CPUs, whichever is faster there) | batched | looped.
  c.model.body_calls = "auto"

  c.data = ml_collections.ConfigDict()
  c.data.source = "photos"    # photos (embedded) | folder | tfds
  c.data.folder = ""          # source=folder: clean images, searched recursively
  c.data.tfds_name = ""       # source=tfds: a prepared TFDS dataset with an image feature
  c.data.tfds_split = "train"
  c.data.tfds_dir = ""        # '' -> $MTL_TFDS_DIR or ~/.cache/mtl/tensorflow_datasets
  c.data.batch_size = 8       # images per task per step, global
  c.data.validation_fraction = 0.0  # source=folder: whole images held out as 'validation'
  c.data.folder_tile = 512    # source=folder: images are stored as tiles of this side
  c.data.cache_mb = 1024      # decoded images kept in memory
  c.data.pairs = ""           # real degraded/clean training pairs: 'TASK=PATH,...' (scale-1 tasks)
  c.data.cache_dir = ""       # source=folder: where its cache of RGB tiles goes ('' -> tfds_dir)

  c.degrade = ml_collections.ConfigDict()
  c.degrade.noise_quantize = False  # IPT clips but does not round the noisy image
  c.degrade.rain = ml_collections.ConfigDict(dict(
      density=(0.004, 0.012), length=(8, 24), angle=(-30.0, 30.0), intensity=(0.4, 0.9),
      width=0.6, streak_dir=""))
  # Ranges each sample draws from (see mtl/degradations/ for what every field means).
  c.degrade.haze = ml_collections.ConfigDict(dict(
      beta=(0.6, 2.5), airlight=(0.7, 1.0), position_weight=(0.3, 0.7), position_span=256,
      luminance_sigma=8.0))
  c.degrade.blur = ml_collections.ConfigDict(dict(
      size=21, motion_prob=0.5, sigma=(0.8, 3.0), length=(5.0, 19.0), angle=(0.0, 180.0)))
  c.degrade.lowlight = ml_collections.ConfigDict(dict(
      gamma=(1.5, 3.0), exposure=(0.1, 0.5), shot=(1e-3, 1e-2), read=(2e-3, 2e-2)))

  c.loss = ml_collections.ConfigDict(dict(contrastive_weight=0.0, temperature=0.07))

  c.optim = ml_collections.ConfigDict(dict(
      lr=2e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=0.0,
      schedule="cosine", warmup_steps=50, final_lr_ratio=0.01,
      milestones=(0.5, 0.75), gamma=0.5))  # milestones: fractions of total_steps (schedule=step)

  c.total_steps = 1000
  c.log_every = 25
  c.checkpoint_every = 250
  c.keep_checkpoints = 2
  c.eval_every = 0            # 0: evaluate at the end only

  c.eval = ml_collections.ConfigDict(dict(
      sets="photos", max_images=0, max_side=0, tile_overlap=8, tile_batch=32, samples=1,
      seed=20210301, save_images=False))  # save_images: PNGs under <workdir>/restored/

  c.conflicts = ml_collections.ConfigDict(dict(every=1, ema_beta=0.1))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # Acting on conflicts (mtl/aggregators/): the body's update from the per-task gradients
  # (sum | mean | pcgrad | gradvac | cagrad | mgda | imtl_g | nash_mtl | aligned_mtl | upgrad;
  # aggregator_args.per_leaf=True: per leaf), a loss weighting ('' | uncertainty | dwa | rlw |
  # famo), and TAG task affinity (Fifty et al. 2021) every affinity_every steps (0: never), its
  # lookahead an SGD step of affinity_lr (0: sized by the gradients, mtl/conflicts/affinity.py).
  c.mtl = ml_collections.ConfigDict(dict(aggregator="sum", loss_weighting="", affinity_every=0,
                                         affinity_lr=0.0))
  c.mtl.aggregator_args = ml_collections.ConfigDict(dict(per_leaf=False))  # + the method's kwargs
  c.mtl.loss_weighting_args = ml_collections.ConfigDict()
  return c
