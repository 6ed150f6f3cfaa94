"""Every field a run reads, with its default. Config files in experiments/ start from
`run_defaults.get_config()` and override what they change.

Not a run by itself: see experiments/tiny.py, small.py, ipt_paper.py. Config files take their argument in
one convention (big_vision's): `--config=experiments/FILE.py:key=value,key=value`, with `+`
between the items of a list value (`tiny.py:tasks=sr_x2+sr_x3`); a bare value without `=`
sets the file's main key (`tiny.py:sr_x2,sr_x3` still works). `parse_arg` reads it.
"""
import math

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


# Groups whose fields are the chosen method's keyword arguments: any name is theirs.
FREE_GROUPS = ("mtl.aggregator_args", "mtl.loss_weighting_args")


def check_fields(saved, source, node=None, prefix=""):
  """Refuse (ValueError, one line) a field of a group of the config dict `saved` (read from
  `source`) that the defaults lack, a group given as a value (or a value as a group), and a
  non-number where the default is a number: what ml_collections' typed overrides check, for a
  config read from a file. Top-level groups of their own are kept: config files add reference
  data there (experiments/allinone3.py's published scores); a top-level value the defaults lack
  is a misspelt field."""
  node = get_config().to_dict() if node is None else node
  for key, value in saved.items():
    name = prefix + key
    if key not in node and not prefix and isinstance(value, dict):
      continue
    if key not in node:
      where = prefix.rstrip(".") or "the config"
      raise ValueError(f"{source}: unknown config field {name!r}; {where} has: "
                       f"{', '.join(sorted(node))}")
    default = node[key]
    if isinstance(default, dict) != isinstance(value, dict):
      kind = "a group of fields" if isinstance(default, dict) else "a value, not a group"
      raise ValueError(f"{source}: {name}={value!r} must be {kind}, as in the defaults")
    if isinstance(default, dict) and name not in FREE_GROUPS:
      check_fields(value, source, default, name + ".")
    elif (isinstance(default, (int, float)) and not isinstance(default, bool)
          and (isinstance(value, bool) or not isinstance(value, (int, float))
               or not math.isfinite(value))):  # JSON's NaN and Infinity parse as floats
      raise ValueError(f"{source}: {name}={value!r} must be a finite number, as the default "
                       f"{default!r}")


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
  c.cpu_threads = 0           # XLA's CPU threads (0: every CPU the run may use); fixes CPU sums

  c.model = ml_collections.ConfigDict(ipt.SIZES[size])
  c.model.init = "torch"      # torch: as the official IPT code initialises | flax: nnx defaults
  c.model.remat = "none"      # none | layer: recompute each encoder/decoder layer in the backward
  c.model.scan_unroll = 1     # encoder/decoder layers per scan iteration: fewer loop iterations
  # The step's T task (probe: 2T half-batch) body calls: auto (one batched computation on GPUs
  # and TPUs, one call each on CPUs, whichever is faster there) | batched | looped | scanned
  # (one body in the program, run by jax.lax.map: the fastest to compile).
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
  # The run's step k draws the crops and degradations of step k + step_offset: a fine-tune's
  # data continues after its pre-training's steps instead of repeating them (studies set it).
  c.data.step_offset = 0

  c.degrade = ml_collections.ConfigDict()
  c.degrade.noise_quantize = False  # IPT clips but does not round the noisy training image
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
      milestones=(0.5, 0.75), gamma=0.5,  # milestones: fractions of total_steps (schedule=step)
      ema_decay=0.0))  # > 0: an EMA of the parameters (BasicSR: 0.999), evaluated beside them

  c.total_steps = 1000
  c.log_every = 25
  c.checkpoint_every = 250
  c.keep_checkpoints = 2
  c.eval_every = 0            # 0: evaluate at the end only

  c.eval = ml_collections.ConfigDict(dict(
      sets="photos", max_images=0, max_side=0, tile_overlap=8, tile_batch=32, samples=1,
      seed=20210301, save_images=False,  # save_images: PNGs under <workdir>/restored/
      tiling="centre",       # centre: each tile's centre kept | ipt: IPT's test | mean (evaluate.py)
      self_ensemble=False))  # also score the x8 flips/rotations ensemble (EDSR's "+")

  c.conflicts = ml_collections.ConfigDict(dict(every=1, batch_size=0, ema_beta=0.1,
                                               gramian_chunk=0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
  # Acting on conflicts (mtl/aggregators/): the body's update from the per-task gradients
  # (sum | mean | pcgrad | gradvac | cagrad | mgda | imtl_g | nash_mtl | aligned_mtl | upgrad;
  # aggregator_args.per_leaf=True: per leaf) or a loss weighting ('' | uncertainty | dwa | rlw |
  # famo), not both, and TAG task affinity (Fifty et al. 2021) every affinity_every steps (0:
  # never), its lookahead an SGD step of affinity_lr (0: sized by the gradients,
  # mtl/conflicts/affinity.py).
  c.mtl = ml_collections.ConfigDict(dict(aggregator="sum", loss_weighting="", affinity_every=0,
                                         affinity_lr=0.0))
  c.mtl.aggregator_args = ml_collections.ConfigDict(dict(per_leaf=False))  # + the method's kwargs
  c.mtl.loss_weighting_args = ml_collections.ConfigDict()
  return c


# One line per field: what it means (launch/train.py --help_config lists them with the values of
# a config). Ranges (lo, hi) are drawn per sample.
FIELD_HELP = {
    "seed": "data order, degradations and initialisation; the same seed reproduces a run",
    "tasks": "task names in order (mtl/tasks.py: denoise_<sigma>, sr_x2, derain, jpeg_<q>, ...)",
    "regime": "scratch (one task) | joint (several, multi-task pre-training) | finetune",
    "schedule": "all: every task every step (conflicts measurable) | one: one task per step (IPT)",
    "init_from": "finetune: the workdir of the run to start from",
    "precision": "compute dtype: float32 | bfloat16 (parameters, norms, softmax, losses and "
                 "bias gradients stay float32; mtl/models/ipt.py)",
    "cpu_threads": "threads of XLA's CPU backend (0: every CPU the run may use); a CPU run's "
                   "numbers depend on it (Eigen splits sums by thread), not on its cores",
    "model.n_feats": "channels of the heads and tails (IPT: 64)",
    "model.patch_size": "side of the training crops and evaluation tiles, pixels (IPT: 48)",
    "model.patch_dim": "side of the patches the body makes tokens of (IPT: 3)",
    "model.num_heads": "attention heads (IPT: 12)",
    "model.num_encoder_layers": "transformer encoder layers (IPT: 12)",
    "model.num_decoder_layers": "transformer decoder layers (IPT: 12)",
    "model.mlp_ratio": "MLP width / token dim (IPT: 4)",
    "model.init": "torch: as the official IPT code initialises | flax: nnx defaults",
    "model.remat": "none | layer: recompute each body layer in the backward pass (less memory)",
    "model.scan_unroll": "encoder/decoder layers per iteration of their scans (1: the smallest "
                         "program; more: fewer loop iterations, a larger program)",
    "model.body_calls": "auto (batched on GPU/TPU, looped on CPU) | batched | scanned "
                        "(compiles fastest) | looped: the step's per-task body calls",
    "data.source": "photos (embedded) | folder | tfds",
    "data.folder": "source=folder: clean images, searched recursively",
    "data.tfds_name": "source=tfds: a prepared TFDS dataset with an image feature",
    "data.tfds_split": "source=tfds: its split to train on",
    "data.tfds_dir": "TFDS data dir ('' -> $MTL_TFDS_DIR or ~/.cache/mtl/tensorflow_datasets)",
    "data.batch_size": "images per task per step, global",
    "data.validation_fraction": "source=folder: share of whole images held out (eval set "
                                "folder_val scores them)",
    "data.folder_tile": "source=folder: images are cached as tiles of this side",
    "data.cache_mb": "decoded images kept in memory, MB",
    "data.pairs": "real degraded/clean training pairs 'TASK=PATH,...' (scale-1 tasks)",
    "data.cache_dir": "source=folder: where its tile cache goes ('' -> data.tfds_dir)",
    "data.step_offset": "step k draws the data (crops, degradations, probe batch) of step k + "
                        "this; a study's fine-tune: its pre-training's steps (0: from the start)",
    "degrade.noise_quantize": "round the noisy training image to integers (IPT clips, does not "
                              "round); test inputs are always uint8, as saved images are",
    "degrade.rain.density": "rain: fraction of pixels that seed a drop (range)",
    "degrade.rain.length": "rain: streak length, pixels (range)",
    "degrade.rain.angle": "rain: degrees from vertical, positive leans right (range)",
    "degrade.rain.intensity": "rain: a full drop peaks at 255 * intensity (range)",
    "degrade.rain.width": "rain: Gaussian sigma across a streak, pixels",
    "degrade.rain.streak_dir": "rain: a folder of real streak layers to use instead ('' -> drawn)",
    "degrade.haze.beta": "haze: scattering coefficient of I = J t + A (1 - t) (range)",
    "degrade.haze.airlight": "haze: atmospheric light A (range)",
    "degrade.haze.position_weight": "haze: share of the image-row term in the depth proxy (range)",
    "degrade.haze.position_span": "haze: pixels over which the row term runs from 1 to 0",
    "degrade.haze.luminance_sigma": "haze: Gaussian blur of the depth proxy's luminance term, px",
    "degrade.blur.size": "blur: kernel side (odd); motion lengths must fit in it",
    "degrade.blur.motion_prob": "blur: share of linear-motion kernels (the rest Gaussian)",
    "degrade.blur.sigma": "blur: Gaussian kernel sigma, pixels (range)",
    "degrade.blur.length": "blur: motion length, pixels (range)",
    "degrade.blur.angle": "blur: motion direction, degrees from vertical (range)",
    "degrade.lowlight.gamma": "low light: x -> x^gamma darkening (range)",
    "degrade.lowlight.exposure": "low light: global gain after the gamma (range)",
    "degrade.lowlight.shot": "low light: Poisson variance per unit signal (range)",
    "degrade.lowlight.read": "low light: Gaussian read-noise standard deviation (range)",
    "loss.contrastive_weight": "weight of IPT's supervised contrastive loss on the tokens (0: off)",
    "loss.temperature": "temperature of the contrastive loss",
    "optim.lr": "peak learning rate (Adam)",
    "optim.b1": "Adam beta1",
    "optim.b2": "Adam beta2",
    "optim.eps": "Adam epsilon",
    "optim.weight_decay": "decoupled weight decay (AdamW; 0: Adam) of the kernels, not of "
                          "biases, norms or embeddings",
    "optim.grad_clip": "clip the global gradient norm to this (0: no clipping)",
    "optim.schedule": "learning-rate schedule: cosine | step | constant",
    "optim.warmup_steps": "linear warm-up steps",
    "optim.final_lr_ratio": "cosine: the lr / the peak lr at step total_steps, one past the "
                            "last (optax's cosine over total_steps - warmup_steps)",
    "optim.milestones": "schedule=step: fractions of total_steps where the lr drops",
    "optim.gamma": "schedule=step: factor the lr drops by at each milestone",
    "optim.ema_decay": "> 0: keep an EMA of the parameters (BasicSR: 0.999), evaluated beside",
    "total_steps": "training steps",
    "log_every": "steps between progress lines, TensorBoard scalars and metrics.jsonl lines",
    "checkpoint_every": "steps between checkpoints (and conflict-store flushes)",
    "keep_checkpoints": "checkpoints kept: the newest of the schedule (every checkpoint_every "
                        "steps and the last; a stop's own until the next save)",
    "eval_every": "steps between intermediate evaluations (0: at the end only)",
    "eval.sets": "test sets: photos, photos_val, folder_val, NAME=PATH, NAME=paired:PATH, "
                 "NAME=for:SEL:...",
    "eval.max_images": "evaluate at most this many images per set (0: all)",
    "eval.max_side": "centre-crop test images to this side (0: whole images)",
    "eval.tile_overlap": "pixels by which evaluation tiles overlap",
    "eval.tile_batch": "tiles per forward pass at evaluation",
    "eval.samples": "restored images per set written to TensorBoard",
    "eval.seed": "seed of the test degradations (the same for every run)",
    "eval.save_images": "also write the restorations as PNG under <workdir>/restored/",
    "eval.tiling": "centre: each tile's centre kept | ipt: IPT's test procedure | mean",
    "eval.self_ensemble": "also score the x8 flips/rotations ensemble (EDSR's '+')",
    "conflicts.every": "steps between conflict probes (0: never)",
    "conflicts.batch_size": "images per task of each probe's own fresh batch, not trained on, "
                            "measured in float32 (even; 0: the training batch's halves, free "
                            "but as noisy as it, in the run's precision)",
    "conflicts.ema_beta": "EMA weight of the cosine curves in the figures",
    "conflicts.gramian_chunk": "entries per piece of the Gramians' contractions, the pieces "
                               "multiplied as a batch and summed (split-K; 0: one product per "
                               "leaf); for accelerators, see gpu_check's gram_chunk part",
    "mesh.data": "data-parallel devices (-1: all)",
    "mesh.fsdp": "devices the parameters are sharded over (FSDP)",
    "mtl.aggregator": "the body's update from the task gradients: sum | mean | pcgrad | ...",
    "mtl.aggregator_args": "the aggregator's arguments (per_leaf: one Gramian per leaf)",
    "mtl.aggregator_args.per_leaf": "aggregate each parameter leaf on its own",
    "mtl.loss_weighting": "'' | uncertainty | dwa | rlw | famo",
    "mtl.loss_weighting_args": "the loss weighting's arguments",
    "mtl.affinity_every": "steps between TAG task-affinity measurements (0: never)",
    "mtl.affinity_lr": "TAG's lookahead SGD step (0: sized by the gradients)",
}


def config_defaults():
  """Every run config field's default, as a plain dict: what a run saved before a field
  existed behaved as (today's default, or run_folder.LEGACY_DEFAULTS')."""
  from mtl import run_folder
  defaults = get_config().to_dict()
  for field, value in run_folder.LEGACY_DEFAULTS.items():
    group, name = field.split(".")
    defaults[group][name] = value
  return defaults
