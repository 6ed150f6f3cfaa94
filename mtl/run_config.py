"""A run's config: command-line values normalized, and every check made before anything runs.

`validate(config)` raises ValueError / FileNotFoundError with one line naming the bad value and
what would be valid; nothing is built or written before it passes.
"""
import copy
import dataclasses
import functools
import math
import os

from absl import logging

from mtl import aggregators, optim, run_folder, tasks
from mtl.data import folder as folder_lib
from mtl.data import pipeline
from mtl.models import ipt

RUN_REGIMES = ("scratch", "joint", "finetune")


def normalize(config):
  """A copy of `config` whose tuple fields given as 'a,b' on the command line are split.

  ml_collections reads --config.tasks=sr_x2,derain as the one-element tuple ('sr_x2,derain');
  every tuple-of-strings field is split on ',' here (numbers already parse: length=8,24).
  """
  config = config.copy_and_resolve_references()

  def visit(node):
    for key in list(node.keys()):
      value = node[key]
      if hasattr(value, "keys"):
        visit(value)
      elif isinstance(value, tuple) and any(isinstance(v, str) and "," in v for v in value):
        node[key] = tuple(p.strip() for v in value
                          for p in (v.split(",") if isinstance(v, str) else [v])
                          if not isinstance(p, str) or p.strip())
  visit(config)
  return absolute_paths(config)


# a run's local paths: a resume from another folder reads the same files (or is refused)
PATH_FIELDS = ("data.folder", "data.tfds_dir", "data.cache_dir", "degrade.rain.streak_dir",
               "init_from")


def local_path(path):
  """A user's local path made absolute, `~` expanded (the shell leaves --flag=~/x as it is), as
  folder.absolute does; '' as given (not the current folder)."""
  return folder_lib.absolute(path) if path else path


def absolute_paths(config):
  """`config` (a run's ConfigDict, or its dict as config.json holds it) with every local path
  absolute: PATH_FIELDS, and the paths in data.pairs and eval.sets entries. A field it lacks is
  left out; a list whose paths are absolute already is left as given."""
  from mtl import evaluate
  config = copy.deepcopy(config)
  for field in PATH_FIELDS:
    *parents, key = field.split(".")
    node = functools.reduce(lambda n, k: n.get(k) if hasattr(n, "get") else None, parents, config)
    if hasattr(node, "get") and isinstance(node.get(key), str):
      node[key] = local_path(node[key])
  parse = {"pairs": lambda e: pipeline.parse_pairs(e)[0][1],
           "sets": lambda e: (evaluate.parse_sets(e) or [(0, 0, None)])[0][2]}
  for group, key in (("data", "pairs"), ("eval", "sets")):
    node = config.get(group) if hasattr(config, "get") else None
    value = node.get(key) if hasattr(node, "get") else None
    if not isinstance(value, str):
      continue
    entries = [e.strip() for e in value.split(",") if e.strip()]
    paths = [parse[key](e) or "" for e in entries]
    if any(local_path(p) != p for p in paths):
      node[key] = ",".join(e[:len(e) - len(p)] + local_path(p) for e, p in zip(entries, paths))
  return config


def _positive(name, value):
  if not value > 0:
    raise ValueError(f"{name}={value} must be > 0")


def _is_task(name):
  try:
    return bool(tasks.get(name))
  except ValueError:
    return False


def _check_source_model(config):
  """init_from must name a run whose model has this config's parameter shapes (the fields
  that differ, each with the value that would fit, where it does not)."""
  source = ipt.ModelConfig.from_config(run_folder.source_run(config.init_from)["model"])
  differ = source.shape_differences(ipt.ModelConfig.from_config(config.model))
  if differ:
    there = ", ".join(f"model.{k}={v!r} (here {h!r})" for k, v, h in differ)
    flags = " ".join(f"--config.model.{k}={v}" for k, v, _ in differ)
    raise ValueError(f"init_from={config.init_from} was trained with {there}; a fine-tune keeps "
                     f"the model's shapes: add {flags}")


def _reads(root, other):
  """Whether (folder, recursive) `root` reads images from `other`'s folder: the same, or (read
  recursively) one inside it that no dot-folder hides (folder.list_images skips those)."""
  (folder, recursive), (inner, _) = root, other
  if inner == folder:
    return True
  if not recursive or os.path.commonpath([inner, folder]) != folder:
    return False
  return not any(part.startswith(".") for part in os.path.relpath(inner, folder).split(os.sep))


def check_sets_apart(sets, data):
  """Refuse (one line) an eval set that reads images training reads: data.folder's (recursively)
  or a data.pairs folder's (`benchmarks.read_roots`). Symlinks resolved, and followed inside
  data.folder as its reader follows them; URLs left to their owner."""
  from mtl import evaluate
  from mtl.data import benchmarks
  tested = [(name, path, kind == "paired") for name, kind, path, _ in evaluate.parse_sets(sets)
            if path and not folder_lib.is_url(path) and os.path.isdir(path)]
  if not tested:  # photos, folder_val: nothing to walk data.folder for
    return
  real = lambda path: os.path.realpath(os.path.expanduser(path))
  roots = lambda path, paired: [(real(f), r) for f, r in benchmarks.read_roots(real(path), paired)
                                if os.path.isdir(f)]
  train = [(f"data.pairs {selector}={path}", roots(path, True))
           for selector, path in pipeline.parse_pairs(data.get("pairs", ""))
           if not folder_lib.is_url(path) and os.path.isdir(path)]
  folder = data.get("folder", "") if data.get("source") == "folder" else ""
  if folder and not folder_lib.is_url(folder):
    train.append((f"data.folder={folder} (read recursively)",
                  [(real(d), False) for d in folder_lib.read_dirs(folder)]
                  if os.path.isdir(folder) else [(real(folder), True)]))
  for name, path, paired in tested:
    read = roots(path, paired)
    for field, trained in train:
      if any(_reads(a, b) or _reads(b, a) for a in trained for b in read):
        raise ValueError(f"eval.sets: {name}={path} shares images with {field}: they would be "
                         "trained on; keep test images out of the training folders")


def validate(config):
  """Check a config before anything is built or written; one clear line per problem. Returns
  what the checks built: the task specs and the model's ipt.ModelConfig.

  Besides the fields, it checks that the folders the config names exist (data folder, eval
  sets, rain streaks, init_from): a run that would fail there must fail before it starts.
  """
  from mtl import degradations, evaluate
  from mtl.data import benchmarks, folder as folder_lib, sources  # TFDS: where a run is checked
  names = list(config.tasks)
  if any(not isinstance(n, str) or not n.strip() for n in names):
    raise ValueError(f"tasks={names} holds an empty name; list task names such as sr_x2,derain")
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise ValueError(f"task(s) listed twice in tasks={names}: {', '.join(map(repr, twice))}")
  specs = tasks.get_all(names)
  if config.regime not in RUN_REGIMES:
    raise ValueError(f"regime={config.regime!r}; valid: {', '.join(RUN_REGIMES)}")
  if config.schedule not in pipeline.TASK_SCHEDULES:
    raise ValueError(f"schedule={config.schedule!r}; valid: {', '.join(pipeline.TASK_SCHEDULES)}")
  if config.regime in ("scratch", "finetune") and len(specs) != 1:
    raise ValueError(f"regime={config.regime!r} trains one task, got tasks={list(config.tasks)}; "
                     "use regime='joint' for several tasks")
  if config.regime == "finetune" and not config.init_from:
    raise ValueError("regime='finetune' needs init_from=<workdir of a joint or scratch run>")
  if config.init_from and config.regime != "finetune":  # it would train from scratch, silently
    raise ValueError(f"init_from={config.init_from} is read by regime='finetune' only; this run "
                     f"(regime={config.regime!r}) would start from a fresh initialisation: add "
                     "--config.regime=finetune, or leave init_from empty")
  if not 0 <= config.seed < 2**32:  # the step and the init draw from its 32 bits (step_args)
    raise ValueError(f"seed={config.seed}; valid: 0 <= seed < 2**32 = {2**32}")
  if config.total_steps < 1:
    raise ValueError(f"total_steps={config.total_steps} must be >= 1")
  offset = pipeline.step_offset(config.data)
  if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
    raise ValueError(f"data.step_offset={offset!r} must be an integer >= 0 (step k draws the "
                     "data of step k + offset; a fine-tune's: its pre-training's steps)")
  if offset + config.total_steps >= 2**31:  # the step's int32 counter plus the offset
    raise ValueError(f"data.step_offset={offset} + total_steps={config.total_steps} must stay "
                     f"below 2**31 = {2**31}")
  for field, value in (("checkpoint_every", config.checkpoint_every),
                       ("log_every", config.log_every), ("keep_checkpoints", config.keep_checkpoints),
                       ("data.batch_size", config.data.batch_size)):
    if value < 1:
      raise ValueError(f"{field}={value} must be >= 1")
  for field, value, what in (("eval_every", config.eval_every, "0: at the end only"),
                             ("conflicts.every", config.conflicts.every, "0: no conflict probes"),
                             ("optim.warmup_steps", config.optim.warmup_steps, "0: no warm-up"),
                             ("eval.max_images", config.eval.max_images, "0: every image"),
                             ("eval.max_side", config.eval.max_side, "0: whole images"),
                             ("cpu_threads", config.get("cpu_threads", 0),
                              "0: every CPU the run may use")):
    if value < 0:
      raise ValueError(f"{field}={value} must be >= 0 ({what})")
  _positive("optim.lr", config.optim.lr)
  if not math.isfinite(config.optim.lr):
    raise ValueError(f"optim.lr={config.optim.lr} must be finite (2e-4 is IPT's)")
  for field, what in (("eps", "Adam's denominator floor; 1e-8 is the usual"),
                      ("gamma", "the step schedule's factor at each milestone; 0.5 is BasicSR's")):
    if not 0 < config.optim[field] < math.inf:
      raise ValueError(f"optim.{field}={config.optim[field]} must be > 0 and finite ({what})")
  for field, what in (("weight_decay", "0: Adam, no decay"), ("grad_clip", "0: no clipping")):
    if not 0 <= config.optim[field] < math.inf:  # a negative one would grow or never clip
      raise ValueError(f"optim.{field}={config.optim[field]} must be >= 0 and finite ({what})")
  outside = [m for m in config.optim.milestones if not 0 < m < 1]
  if outside:  # fractions of total_steps: one at or past 1 would never be reached
    raise ValueError(f"optim.milestones={tuple(config.optim.milestones)}: {outside[0]} is not a "
                     "fraction of total_steps in (0, 1); e.g. 0.5,0.75")
  for field in ("b1", "b2"):
    if not 0 <= config.optim[field] < 1:
      raise ValueError(f"optim.{field}={config.optim[field]} must be in [0, 1) (Adam's moment "
                       "decay; 0.9 and 0.999 are the usual)")
  if not 0 <= config.optim.final_lr_ratio <= 1:
    raise ValueError(f"optim.final_lr_ratio={config.optim.final_lr_ratio} must be in [0, 1] (the "
                     "cosine's end lr over its peak)")
  decay = config.optim.get("ema_decay", 0.0)
  if not 0 <= decay < 1:
    raise ValueError(f"optim.ema_decay={decay} must be in [0, 1): 0 keeps no EMA of the "
                     "parameters, 0.999 is BasicSR's")
  if config.optim.schedule not in optim.LR_SCHEDULES:
    raise ValueError(f"optim.schedule={config.optim.schedule!r}; valid: {', '.join(optim.LR_SCHEDULES)}")
  for name in ("n_feats", "patch_size", "patch_dim", "num_heads", "num_encoder_layers",
               "num_decoder_layers", "mlp_ratio"):
    if config.model[name] < 1:
      raise ValueError(f"model.{name}={config.model[name]} must be >= 1")
  model_cfg = ipt.ModelConfig.from_config(config.model, config.precision)
  aggregators.check_config(config.get("mtl"), len(specs), config.schedule)
  if not 0 <= config.loss.contrastive_weight < math.inf:
    raise ValueError(f"loss.contrastive_weight={config.loss.contrastive_weight} must be >= 0 and "
                     "finite (0: L1 alone)")
  if config.loss.contrastive_weight and not 0 < config.loss.temperature < math.inf:
    raise ValueError(f"loss.temperature={config.loss.temperature} must be > 0 and finite (it "
                     "divides the similarities; 0.07 is IPT's)")
  if not 0 <= config.conflicts.ema_beta <= 1:  # read by the figures drawn at the end of the run
    raise ValueError(f"conflicts.ema_beta={config.conflicts.ema_beta} must be in [0, 1] (the "
                     "GradVac EMA weight of the cosine curves; 0: no EMA)")
  if config.eval.tiling not in evaluate.TILINGS:  # else the first evaluation fails, after training
    raise ValueError(f"eval.tiling={config.eval.tiling!r}; valid: "
                     f"{', '.join(map(repr, evaluate.TILINGS))}")
  if not 0 <= config.eval.seed < 2**32:
    raise ValueError(f"eval.seed={config.eval.seed}; valid: 0 <= eval.seed < 2**32 = {2**32}")
  if config.data.cache_mb < 0:
    raise ValueError(f"data.cache_mb={config.data.cache_mb} must be >= 0 (MiB of decoded images "
                     "kept in memory; 0: none)")
  overlap, patch = config.eval.tile_overlap, config.model.patch_size
  if not 0 <= overlap < patch:
    raise ValueError(f"eval.tile_overlap={overlap} must be in [0, model.patch_size={patch}) "
                     "(tiles of patch_size pixels overlapping by it)")
  for name in ("tile_batch", "samples"):
    if config.eval[name] < 1:
      raise ValueError(f"eval.{name}={config.eval[name]} must be >= 1")
  sources.check_config(config.data)
  if config.data.source == "folder" and config.data.folder:
    # a bucket's folder (gs://...) is read through etils.epath; its build lists it
    local = not folder_lib.is_url(config.data.folder)
    if local and not os.path.isdir(config.data.folder):
      raise FileNotFoundError(f"data.folder={config.data.folder} is not a folder")
    if local and not folder_lib.has_images(config.data.folder):  # before TFDS prepares one
      raise ValueError(f"data.folder={config.data.folder} holds no images (looked recursively "
                       f"for {', '.join(folder_lib.IMAGE_EXTENSIONS)})")
    fraction = config.data.get("validation_fraction", 0.0)
    if not 0 <= fraction < 1:
      raise ValueError(f"data.validation_fraction={fraction} must be in [0, 1) (the share of "
                       "the folder's images held out; 0: none)")
    tile = config.data.get("folder_tile", folder_lib.DEFAULT_TILE)
    if tile < 0:
      raise ValueError(f"data.folder_tile={tile} must be >= 0 (0: whole images)")
    crop = max(specs, key=lambda s: s.hr_crop(config.model.patch_size))
    side = crop.hr_crop(config.model.patch_size)
    if 0 < tile < side:  # the pipeline would reflect-pad every tile: crops mostly mirror images
      raise ValueError(f"data.folder_tile={tile} is smaller than task {crop.name}'s {side}-pixel "
                       f"training crop; use data.folder_tile >= {side} (or 0: whole images)")
  entries = evaluate.parse_sets(config.eval.sets)
  if not entries:  # else every evaluation prints empty tables and saves results of no set
    raise ValueError(f"eval.sets={config.eval.sets!r} names no test set; give one or more, "
                     f"comma-separated: photos, photos_val, {evaluate.FOLDER_VAL} (held out of "
                     "data.folder), NAME=PATH (clean HR folder), "
                     "NAME=paired:PATH (degraded/clean pairs) or NAME=for:TASKS:... (only for "
                     "TASKS)")
  seen = set()
  for set_name, _, path, selector in entries:
    # The name keys the results, the TensorBoard tags and restored/<step>/<task>/<set>/.
    if not set_name.strip() or set_name in (".", "..") or "/" in set_name or "\\" in set_name:
      raise ValueError(f"eval.sets: {set_name}={path} has no usable name; give each set a name "
                       "without '/' (NAME=PATH, e.g. Set5=/d/Set5)")
    if set_name in seen:
      raise ValueError(f"eval.sets: the name {set_name!r} is given twice (its second set would "
                       "replace the first's results); give each set its own name")
    seen.add(set_name)
    if path is None and set_name == evaluate.FOLDER_VAL:
      try:
        benchmarks.check_held_out(config.data)
      except ValueError as error:
        raise ValueError(f"eval.sets: {set_name} scores the images held out of data.folder, "
                         f"but {error}") from None
    if path == "":
      raise ValueError(f"eval.sets: {set_name} has no folder; give {set_name}=PATH (or "
                       f"{set_name}=for:TASKS:PATH, {set_name}=paired:PATH)")
    if path is not None and not folder_lib.is_url(path) and not os.path.isdir(path):
      raise FileNotFoundError(f"eval.sets: {set_name}={path} is not a folder")
    for part in filter(None, selector.split("+")):  # a misspelt one would score nothing, silently
      if part not in tasks.KINDS and not _is_task(part):
        raise ValueError(f"eval.sets: {set_name}=for:{selector}: {part!r} is neither a task kind "
                         f"({', '.join(tasks.KINDS)}) nor a task ({tasks.VALID_NAMES})")
  check_sets_apart(config.eval.sets, config.data)
  for set_name, kind, path, _ in entries:  # else found at the first evaluation, mid-run
    if path and not folder_lib.is_url(path):
      try:
        benchmarks.hr_paths(path) if kind == "hr" else benchmarks.find_pairs(path)
      except ValueError as error:
        raise ValueError(f"eval.sets: {set_name}={path}: {error}") from None
  for selector, path in pipeline.parse_pairs(config.data.get("pairs", "")):
    try:  # else the first batch that draws a misfit pair fails, after the workdir was written
      benchmarks.check_pair_sizes(path)
    except ValueError as error:
      raise ValueError(f"data.pairs: {selector}={path}: {error}") from None
  degradations.check_config(config.degrade)
  streaks = config.degrade.rain.streak_dir
  if streaks and not os.path.isdir(streaks):
    raise FileNotFoundError(f"degrade.rain.streak_dir={streaks} is not a folder")
  if streaks and not any(spec.kind == "derain" for spec in specs):
    logging.warning("degrade.rain.streak_dir=%s is set, but no task rains (tasks: %s): it is "
                    "not used", streaks, ", ".join(config.tasks))
  if config.regime == "finetune":
    _check_source_model(config)
  if (config.schedule == "one" and config.conflicts.every > 0 and config.regime != "scratch"
      and len(specs) >= 2):  # probe_plan's case with no pair of gradients at the same parameters
    logging.warning("conflicts.every=%d ignored: with schedule='one' each step sees one task, so "
                    "no two task gradients are taken at the same parameters; use schedule='all' "
                    "to measure conflicts", config.conflicts.every)
  plan = probe_plan(config)
  if plan.probe_every and not plan.batch_size and config.precision == "bfloat16":
    logging.warning("conflicts on the training batch of a bfloat16 run are measured on the "
                    "bfloat16 gradients the update takes, whose rounding the two halves partly "
                    "share (the noise floor cannot remove it: corrected cosines moved by up to "
                    "0.013 on the tiny model); conflicts.batch_size > 0 measures a probe batch "
                    "of its own in float32")
  if config.conflicts.get("gramian_chunk", 0) < 0:
    raise ValueError(f"conflicts.gramian_chunk={config.conflicts.gramian_chunk} must be >= 0 "
                     "(entries per piece of the Gramians' contractions; 0: no pieces)")
  probe_batch = config.conflicts.get("batch_size", 0)
  if probe_batch < 0 or probe_batch % 2:
    raise ValueError(f"conflicts.batch_size={probe_batch} must be an even number >= 0 (it is "
                     "split into two equal halves, the noise floor; 0: probe on the training "
                     "batch)")
  if probe_plan(config).splits and config.data.batch_size % 2:
    raise ValueError(f"data.batch_size={config.data.batch_size} is odd; conflict probes split "
                     "each task's sub-batch into two equal halves (the noise floor): use an even "
                     "batch size, or conflicts.every=0")
  return specs, model_cfg


@dataclasses.dataclass(frozen=True)
class ProbePlan:
  """Which steps probe conflicts and on which batch, decided once from the config (`probe_plan`)
  and given to the pipeline, the step and the loop: conflict probes every `probe_every` steps
  (0: none), on a probe batch of `batch_size` images per task of its own (0: the training
  batch's two halves); and whether every step needs the per-task body gradients (`aggregate`)."""
  probe_every: int
  aggregate: bool
  batch_size: int = 0

  @property
  def splits(self):
    """Whether any step splits the training batch into halves (each task's sub-batch size must
    then be even)."""
    return bool(self.probe_every and not self.batch_size) or self.aggregate

  def probes(self, step):
    return bool(self.probe_every and step % self.probe_every == 0)

  def probe_size(self, step):
    """Images per task of the probe batch the pipeline adds to `step`'s batch (0: none)."""
    return self.batch_size if self.probes(step) else 0

  def describe(self, training_batch):
    """Which batch the conflict figures use, in words."""
    if not self.probe_every:
      return "no conflict probes"
    if self.batch_size:
      return (f"a probe batch of {self.batch_size} fresh images per task (not trained on), "
              f"every {self.probe_every} steps")
    return (f"the training batch ({training_batch} per task, in halves), every "
            f"{self.probe_every} steps")


def probe_plan(config):
  """Conflicts are measured only where tasks share parameters within one step: two or more
  tasks, trained jointly, all of them in every step."""
  probes = (config.conflicts.every > 0 and config.regime != "scratch" and len(config.tasks) >= 2
            and config.schedule != "one")
  return ProbePlan(config.conflicts.every if probes else 0,
                   aggregators.aggregating(config.get("mtl")),
                   config.conflicts.get("batch_size", 0) if probes else 0)
