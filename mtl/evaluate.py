"""Evaluation as the field does it: whole images by overlapping tiles, Y-channel PSNR / SSIM.

Test sets come from `config.eval.sets`, a comma-separated list of
  photos              the embedded photographs' test split (clean HR; degraded per task)
  photos_val          their validation split (for choosing hyper-parameters)
  NAME=PATH           a folder of clean HR images (Set5, Set14, B100, Urban100, CBSD68 ...)
  NAME=paired:PATH    degraded / clean pairs (mtl.data.benchmarks layouts); derain tasks only
  NAME=for:SEL:...    either of the two, used only by the tasks SEL names: task kinds or names
                      joined by '+' (CBSD68=for:denoise:/d/CBSD68,
                      SOTS=for:dehaze:paired:/d/SOTS/outdoor, LOL=for:lowlight:paired:/d/LOL/eval15)
With config.eval.save_images the restorations are also written as PNG under
<workdir>/restored/<step>/<task>/<set>/<name>.png.
Clean HR images are degraded deterministically, per (task, image's place in its set's sorted
listing), with keys independent of the run's task list, so scratch, joint and fine-tuned runs
are scored on identical inputs; a set with an image added or removed draws other noise for the
images after it.
"""
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from mtl import degradations, events, files, metrics, run_folder, tasks


PHOTO_SETS = {"photos": "test", "photos_val": "validation"}  # eval set -> photos split
FOLDER_VAL = "folder_val"   # the images data.validation_fraction holds out of data.folder


@dataclasses.dataclass
class TestSet:
  name: str
  kind: str      # 'hr' (clean images, degraded here) or 'paired' (degraded, clean)
  items: list    # [(name, hr)] or [(name, degraded, clean)], uint8 HWC
  tasks: str = ""  # selector of the tasks it serves ('' = all; see tasks.selects)


def parse_sets(spec):
  """'photos,Set5=/d/Set5,SOTS=for:dehaze:paired:/d/S' -> [(name, kind, path or None, selector)]."""
  entries = []
  for entry in filter(None, (e.strip() for e in spec.split(","))):
    if entry in PHOTO_SETS or entry == FOLDER_VAL:
      entries.append((entry, "hr", None, ""))
    elif "=" in entry:
      name, path = entry.split("=", 1)
      selector = ""
      if path.startswith("for:"):
        selector, _, path = path[len("for:"):].partition(":")
      kind = "paired" if path.startswith("paired:") else "hr"
      path = path[len("paired:"):] if kind == "paired" else path
      entries.append((name, kind, path, selector or ("derain" if kind == "paired" else "")))
    else:
      raise ValueError(f"eval.sets entry {entry!r} is not valid; use 'photos', 'photos_val', "
                       f"'{FOLDER_VAL}' (held out of data.folder), 'NAME=PATH' "
                       "(clean HR folder), 'NAME=paired:PATH' (degraded/clean pairs) or "
                       "'NAME=for:TASKS:...' (only for TASKS, e.g. SOTS=for:dehaze:paired:PATH)")
  return entries


def load_testsets(config):
  from mtl.data import benchmarks
  sets = []
  for name, kind, path, selector in parse_sets(config.eval.sets):
    if path is None and name == FOLDER_VAL:
      items = benchmarks.folder_validation_set(config.data, config.eval.max_images)
    elif path is None:
      items = benchmarks.photos_testset(config.data, PHOTO_SETS[name])
    elif kind == "paired":
      sr = [spec.name for spec in tasks.get_all(config.tasks)
            if spec.scale > 1 and tasks.selects(selector, spec)]
      if sr:  # its clean image would be read as a larger, centre-cropped one (SOTS indoor)
        raise ValueError(f"eval.sets {name}: {', '.join(sr)} would score a paired set; an SR "
                         f"task degrades a clean set itself: give {name}=for:{sr[0]}:<HR "
                         "folder>, or name the tasks the pairs are for (for:derain:paired:...)")
      items = benchmarks.load_paired_folder(path)
    else:
      items = benchmarks.load_hr_folder(path)
    if config.eval.max_images:
      items = items[:config.eval.max_images]
    if config.eval.max_side:
      items = [tuple([item[0]] + [_center_crop(im, config.eval.max_side) for im in item[1:]])
               for item in items]
    _check_sides(name, items, [spec.name for spec in tasks.get_all(config.tasks)
                               if tasks.selects(selector, spec)], config.eval.max_side)
    sets.append(TestSet(name, kind, items, selector))
    rain = [spec.name for spec in tasks.get_all(config.tasks)
            if spec.kind == "derain" and tasks.selects(selector, spec)]
    if kind == "hr" and rain and config.degrade.rain.get("streak_dir"):
      print(f"warning: {rain[0]} on {name}: trained on degrade.rain.streak_dir's real streak "
            "layers, tested on this clean set with mtl's drawn rain; a paired set tests real rain "
            "(e.g. Rain100L=for:derain:paired:<folder of rain / norain pairs>)", flush=True)
    if kind == "hr" and all(metrics.is_grey(hr) for _, hr in items):
      for spec in tasks.get_all(config.tasks):  # once per start, not at every evaluation
        if spec.kind == "denoise" and not spec.gray and tasks.selects(selector, spec):
          print(f"warning: {spec.name} on {name}: every image is grey; a colour task adds noise "
                "per channel and scores Y, which no grey benchmark reports (grey protocol: "
                f"denoise_gray_{spec.sigma:g})", flush=True)
  return sets


def _check_sides(set_name, items, task_names, max_side=0):
  """Refuse (before training) a clean image too small to score: SSIM's window must fit after an
  SR task's mod-crop (< scale pixels) and its `scale`-pixel border crop (and eval.max_side's
  centre crop, `max_side`)."""
  # the smallest side whose mod-crop (a multiple of `scale`) keeps the window after the border
  needed = max([metrics.SSIM_WINDOW] + [
      spec.scale * -(-(metrics.SSIM_WINDOW + 2 * spec.scale) // spec.scale)
      for spec in tasks.get_all(task_names) if spec.scale > 1])
  for item in items:
    h, w = item[-1].shape[:2]
    if min(h, w) < needed:
      raise ValueError(f"eval.sets {set_name}: {item[0]} is {h}x{w} pixels; scoring needs at "
                       f"least {needed}x{needed} (SSIM's {metrics.SSIM_WINDOW}x"
                       f"{metrics.SSIM_WINDOW} window after the SR border crop): "
                       + (f"raise eval.max_side={max_side}" if 0 < max_side < needed
                          else "remove it from the set"))


def _center_crop(image, side):
  h, w = image.shape[:2]
  top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
  return image[top:top + side, left:left + side]


def _key(seed, task, index):
  key = jax.random.fold_in(jax.random.key(seed), tasks.task_id(task))
  return jax.random.fold_in(key, index)


@functools.lru_cache(maxsize=None)
def _degrade_fn(spec, degrade_cfg_json):
  import ml_collections
  cfg = ml_collections.ConfigDict(json.loads(degrade_cfg_json))
  return jax.jit(lambda key, hr: degradations.degrade(spec, key, hr, cfg))


def test_pairs(spec, testset, config):
  """[(name, degraded input uint8, clean target uint8)] for one task on one test set."""
  if testset.kind == "paired":
    return list(testset.items)
  degrade = _degrade_fn(spec, json.dumps(config.degrade.to_dict()))
  pairs = []
  for index, (name, hr) in enumerate(testset.items):
    hr = hr[:hr.shape[0] - hr.shape[0] % spec.scale, :hr.shape[1] - hr.shape[1] % spec.scale]
    inputs, target = degrade(_key(config.eval.seed, spec.name, index), hr[None])
    as_uint8 = lambda x: np.asarray(jnp.clip(jnp.round(x[0]), 0, 255)).astype(np.uint8)
    pairs.append((name, as_uint8(inputs), as_uint8(target)))   # grey denoising: grey target
  return pairs


def tile_starts(size, tile, overlap):
  """Tile origins covering [0, size) with at least `overlap` pixels shared by neighbours."""
  if size <= tile:
    return [0]
  stride = tile - overlap
  starts = list(range(0, size - tile, stride))
  return starts + [size - tile]


TILINGS = ("centre", "ipt", "mean")


def _tile_grid(size, tile, overlap, tiling):
  """(tile starts, the grid's starts) along one axis of `size` >= `tile` (axis_windows)."""
  if tiling == "ipt":
    stride = max(1, (tile // 2) // 2)
    grid = list(range(0, size - tile + 1, stride))
    return grid + ([size - tile] if (size - tile) % stride else []), grid
  if tiling in ("centre", "mean"):
    starts = tile_starts(size, tile, overlap)
    return starts, starts
  raise ValueError(f"eval.tiling={tiling!r}; valid: {', '.join(map(repr, TILINGS))}")


def tile_count(height, width, tile, overlap, tiling, self_ensemble=False, kind=""):
  """How many tiles restore_float runs an image of height x width through."""
  along = lambda size: len(_tile_grid(max(size, tile), tile, overlap, tiling)[0])
  views = ensemble_of(kind) if self_ensemble else ((0, False),)
  return sum(along(width if k % 2 else height) * along(height if k % 2 else width)
             for k, _ in views)


def axis_windows(size, tile, scale, overlap, tiling):
  """(tile starts, weights (tiles, size * scale), split) along one axis of `size` >= `tile` input
  pixels: at every output pixel the weights of the tiles covering it sum to 1.

  centre: tiles `overlap` apart as tile_starts places them; each keeps its centre, dropping
    overlap // 2 pixels on every side a neighbour covers (its image-border sides are kept), so
    every output pixel comes from a tile that sees at least overlap // 2 input pixels around it
    (tiled equals untiled for a model whose receptive field reaches no farther).
  ipt: the official IPT test (huawei-noah/Pretrained-IPT, model/__init__.py forward_chop):
    tiles a quarter tile apart (stride s = (tile // 2) // 2), each keeping its centre (s pixels
    dropped per side, the first tile's outer side kept) and overlapping centres averaged; the
    last `cut` = (size - tile) % s pixels come from one more tile flush with the far border,
    which takes over at `split` (the middle of its overlap with the grid's last tile).
  mean: tile_starts' tiles averaged where they overlap (seams where a model sees less context).
  split is only used by 'ipt' (None otherwise).
  """
  starts, grid = _tile_grid(size, tile, overlap, tiling)
  margin = {"ipt": max(1, (tile // 2) // 2), "centre": overlap // 2, "mean": 0}[tiling]
  split = None
  if tiling == "ipt":
    cut = (size - tile) % margin  # ipt's margin is its stride
    split = (size - cut) * scale - (tile - cut) * scale // 2
  cover = np.zeros((len(starts), size * scale))
  for i, start in enumerate(grid):
    lo = start + margin if start > 0 else 0
    end = start + tile
    hi = end - margin if (end < size or tiling == "ipt") else end
    cover[i, lo * scale:hi * scale] = 1
  if tiling == "ipt":  # the far border's tile (or the grid's last when it is flush) from split on
    cover[:, split:] = 0
    cover[len(starts) - 1, split:] = 1
  weights = cover / cover.sum(0, keepdims=True)
  return starts, weights, split


# The eight transforms of the square's symmetry group (EDSR's and IPT's self-ensemble "x8"):
# k quarter turns, after a left-right flip or not.
ENSEMBLE = tuple((k, flip) for flip in (False, True) for k in range(4))
# Degradations with a direction: drawn rain streaks fall within 30 degrees of vertical and haze's
# depth grows towards the top, so a quarter turn or an upside-down image shows the model inputs
# their synthesis never makes; their self-ensemble keeps the orientation (the image and its
# left-right mirror). Real rain pairs and streak layers are quarter-turned in training as every
# crop is (IPT's augmentation), so there it forgoes views the model has seen.
ORIENTED_KINDS = ("derain", "dehaze")


def ensemble_of(kind):
  """The (quarter turns, flip) transforms a task's self-ensemble averages."""
  return ((0, False), (0, True)) if kind in ORIENTED_KINDS else ENSEMBLE


def transform(image, k, flip):
  """HWC image -> its flip (if any), then k counter-clockwise quarter turns."""
  return np.rot90(image[:, ::-1] if flip else image, k, axes=(0, 1))


def invert(image, k, flip):
  """The inverse of transform(., k, flip)."""
  image = np.rot90(image, -k, axes=(0, 1))
  return image[:, ::-1] if flip else image


# The most bytes of tile outputs held at once: tiled_restore hands apply_tiles groups of tiles
# and adds each group into the image before the next (a 12-megapixel x4 image under IPT's
# tiling is 82,000 tiles, 34 GiB of outputs).
GROUP_BYTES = 256 << 20


def tiled_restore(apply_tiles, image, scale, tile=48, overlap=8, tiling="centre"):
  """Whole-image inference, float32 (H*s, W*s, 3): tile x tile crops through `apply_tiles`
  ((N, tile, tile, 3) float32 -> (N, tile*s, tile*s, 3), any N; called on groups of at most
  GROUP_BYTES of outputs), weighted by `axis_windows`. An image smaller than a tile is
  reflect-padded to one and the output cropped back."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((0, max(0, tile - h)), (0, max(0, tile - w)), (0, 0)), mode="reflect")
  ph, pw = padded.shape[:2]
  ys, wy, _ = axis_windows(ph, tile, scale, overlap, tiling)
  xs, wx, split_x = axis_windows(pw, tile, scale, overlap, tiling)
  origins = [(i, y, j, x) for i, y in enumerate(ys) for j, x in enumerate(xs)]
  t = tile * scale
  group = max(1, GROUP_BYTES // (t * t * 3 * 4))
  canvas = np.zeros((ph * scale, pw * scale, 3), np.float64)
  corner = None
  for start in range(0, len(origins), group):
    part = origins[start:start + group]
    outputs = apply_tiles(np.stack([padded[y:y + tile, x:x + tile] for _, y, _, x in part])
                          .astype(np.float32))
    corner = outputs[0] if corner is None else corner
    for (i, y, j, x), out in zip(part, outputs):
      window = np.outer(wy[i, y * scale:y * scale + t], wx[j, x * scale:x * scale + t])
      canvas[y * scale:y * scale + t, x * scale:x * scale + t] += out * window[..., None]
  if tiling == "ipt":
    # forward_chop writes its left column of tiles over its top row before it writes the
    # averaged centres, so the top rows' first tile-width comes from the corner tile alone.
    m = max(1, (tile // 2) // 2) * scale
    canvas[:m, m:min(t, split_x)] = corner[:m, m:min(t, split_x)]
  return canvas[:h * scale, :w * scale].astype(np.float32)


def restore_float(apply_tiles, image, scale, tile=48, overlap=8, tiling="centre",
                  self_ensemble=False, kind=""):
  """tiled_restore, or with self_ensemble the mean over ensemble_of(kind) of each transformed
  image's tiled restoration transformed back (EDSR's "+" and IPT's --self_ensemble: whole images
  transformed, each tiled on its own grid)."""
  if not self_ensemble:
    return tiled_restore(apply_tiles, image, scale, tile, overlap, tiling)
  outs = [invert(tiled_restore(apply_tiles, np.ascontiguousarray(transform(image, k, flip)),
                               scale, tile, overlap, tiling), k, flip)
          for k, flip in ensemble_of(kind)]
  return np.mean(outs, axis=0, dtype=np.float64).astype(np.float32)


class NonFiniteOutput(ValueError):
  """The model's restoration holds NaN or inf (a diverged or overflowing model)."""


def restore_image(apply_tiles, image, scale, tile=48, overlap=8, tiling="centre",
                  self_ensemble=False, kind=""):
  """restore_float rounded and clipped to uint8, as scored and saved; NonFiniteOutput if it holds
  NaN or inf."""
  out = restore_float(apply_tiles, image, scale, tile, overlap, tiling, self_ensemble, kind)
  bad = out.size - np.count_nonzero(np.isfinite(out))
  if bad:  # NaN casts to an arbitrary uint8: its image and scores would look real
    raise NonFiniteOutput(f"the model's output holds {bad} non-finite values (NaN or inf) of "
                          f"{out.size}")
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- on the devices


def local_mesh(mesh=None):
  """A ('data',) mesh of this process's devices (of `mesh`'s, when given): evaluation's."""
  devices = (jax.local_devices() if mesh is None else
             [d for d in mesh.devices.flat if d.process_index == jax.process_index()])
  return jax.make_mesh((len(devices),), ("data",), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def local_params(params, mesh):
  """The parameters replicated on every device of the local `mesh`, copied device to device
  (sharded ones all-gathered on the devices first); never through the host."""
  replicated = NamedSharding(mesh, P())
  if all(getattr(x, "is_fully_addressable", True) for x in jax.tree_util.tree_leaves(params)):
    return jax.device_put(params, replicated)
  # Spread over several processes: all-gather on the run's mesh, then take the local copies.
  gathered = jax.jit(lambda p: p, out_shardings=jax.tree_util.tree_map(
      lambda x: NamedSharding(x.sharding.mesh, P()), params))(params)
  return jax.tree_util.tree_map(lambda x: jax.device_put(x.addressable_data(0), replicated),
                                gathered)


@functools.lru_cache(maxsize=None)
def _tiles_fn(model, task, mesh):
  """jit of (params, chunks (C, B, P, P, 3)) -> outputs: lax.map over the C chunks, each
  chunk's B tiles sharded over the mesh's devices."""
  chunk = NamedSharding(mesh, P("data"))
  def run(params, chunks):
    apply = lambda c: model.apply(params, task, jax.lax.with_sharding_constraint(c, chunk))
    return jax.lax.map(apply, chunks)
  return jax.jit(run, out_shardings=NamedSharding(mesh, P(None, "data")))


MAX_CHUNKS = 8  # chunks per call: calls of 1, 2, 4 or 8 chunks, one program each


def tile_runner(model, params, task, tile_batch=32, mesh=None):
  """apply_tiles for tiled_restore: (N, P, P, 3) float32 numpy -> (N, P*s, P*s, 3) numpy, any N.

  `params` must already live on `mesh` (local_params). The tiles go through the jitted lax.map
  of _tiles_fn in chunks of tile_batch (rounded up to a multiple of the device count) sharded
  over the devices; a call takes up to MAX_CHUNKS chunks, padded to a power of two, so one
  program per (task, chunk count) serves every image size. Calls are dispatched before any
  result is fetched.
  """
  mesh = local_mesh() if mesh is None else mesh
  fn = _tiles_fn(model, task, mesh)
  devices = mesh.devices.size
  batch = -(-tile_batch // devices) * devices
  sharding = NamedSharding(mesh, P(None, "data"))

  def apply_tiles(tiles):
    n = len(tiles)
    chunks = -(-n // batch)
    pending = []
    for first in range(0, chunks, MAX_CHUNKS):
      count = min(MAX_CHUNKS, chunks - first)
      count = 1 << (count - 1).bit_length()  # the next power of two
      block = np.zeros((count * batch,) + tiles.shape[1:], np.float32)
      part = tiles[first * batch:(first + count) * batch]
      block[:len(part)] = part
      block = jax.device_put(block.reshape((count, batch) + tiles.shape[1:]), sharding)
      pending.append((len(part), fn(params, block)))
    outs = [np.asarray(out).reshape((-1,) + out.shape[2:])[:size] for size, out in pending]
    return np.concatenate(outs)
  return apply_tiles


def input_baseline(spec, degraded):
  """What the degraded input scores: itself, or its MATLAB-bicubic upsampling for SR."""
  if spec.scale == 1:
    return degraded
  up = degradations.imresize(jnp.asarray(degraded, jnp.float32), float(spec.scale))
  return np.asarray(jnp.clip(jnp.round(up), 0, 255)).astype(np.uint8)


def score(output, target, crop_border, gray=False):
  if gray:  # DnCNN's grey PSNR is on the grey plane: Y of 3 equal channels adds 219/255 (+1.3 dB)
    output, target = metrics.grey_plane(output), metrics.grey_plane(target)
  return {
      "psnr_y": metrics.psnr(output, target, crop_border, y_channel=True),
      "ssim_y": metrics.ssim(output, target, crop_border, y_channel=True),
      "psnr_rgb": metrics.psnr(output, target, crop_border, y_channel=False),
      "ssim_rgb": metrics.ssim(output, target, crop_border, y_channel=False),
  }


def mean_entry(rows):
  """Per-image means of `score`'s keys (an image equal to its target: PSNR inf, at
  `metrics.PSNR_CAP` in the mean); 'identical': how many are, where any."""
  entry, identical = {}, 0
  for key in rows[0]:
    values = [r[key] for r in rows]
    if key.startswith("psnr"):
      entry[key], n = metrics.mean_psnr(values)
      identical = max(identical, n)
    else:
      entry[key] = float(np.mean(values))
  return {**entry, "identical": identical} if identical else entry


COUNTS = ("num_images", "identical", "input_identical")  # an entry's counts, not scores
VARIANT_LABELS = {"self_ensemble": "x8", "ema": "EMA", "ema+self_ensemble": "EMA x8"}


def variants(config, ema_params=None):
  """[(name, use EMA parameters, self-ensemble)] evaluated beside the headline ('', False, False):
  config.eval.self_ensemble adds 'self_ensemble'; EMA parameters add 'ema' (and both
  'ema+self_ensemble')."""
  ensemble = bool(config.eval.get("self_ensemble", False))
  out = [("self_ensemble", False, True)] if ensemble else []
  if ema_params is not None:
    out += [("ema", True, False)] + ([("ema+self_ensemble", True, True)] if ensemble else [])
  return out


def evaluate(model, params, config, testsets, workdir, step, writer=None, final=False,
             ema_params=None, results_file=None):
  """Score every task on every applicable test set; write results.json (or the run folder's
  name for `step`, or `results_file` in workdir); return the results.

  results['tasks'] scores the parameters as trained, restored plainly; each of `variants`
  (self-ensemble x8, EMA parameters) goes in results['variants'][name]['tasks'], same schema.
  The parameters stay on the devices: copied once onto this process's devices (local_mesh), every
  tile batch sharded over them (tile_runner).
  """
  mesh = local_mesh()
  tiling = config.eval.get("tiling", "centre")
  others = variants(config, ema_params)
  # Copied before the local mesh is the context: gathering spread parameters runs on theirs.
  on_device = {False: local_params(params, mesh)}
  if ema_params is not None:
    on_device[True] = local_params(ema_params, mesh)
  from mtl import progress as progress_lib
  runs = [("", False, False)] + others
  # a line every 10 s, for evaluations that take that long (a benchmark set, x8, paper size)
  progress = progress_lib.Progress(len(runs) * sum(
      len(t.items) for spec in model.specs for t in testsets if tasks.selects(t.tasks, spec)),
      every_seconds=10, unit="image")
  restored = 0
  with jax.set_mesh(mesh):
    scored = {name: {} for name, _, _ in runs}
    for spec in model.specs:
      runners = {ema: tile_runner(model, p, spec.name, config.eval.tile_batch, mesh)
                 for ema, p in on_device.items()}
      crop = spec.scale if spec.kind == "sr" else 0
      for testset in testsets:
        if not tasks.selects(testset.tasks, spec):
          continue
        rows, baseline = {name: [] for name, _, _ in runs}, []
        for index, (name, degraded, clean) in enumerate(test_pairs(spec, testset, config)):
          clean = clean[:degraded.shape[0] * spec.scale, :degraded.shape[1] * spec.scale]
          shown = input_baseline(spec, degraded)
          baseline.append(score(shown, clean, crop, spec.gray))
          for variant, ema, ensemble in runs:
            try:
              output = restore_image(runners[ema], degraded, spec.scale, config.model.patch_size,
                                     config.eval.tile_overlap, tiling, ensemble, spec.kind)
            except NonFiniteOutput as error:
              raise NonFiniteOutput(f"evaluation at step {int(step)}: task {spec.name}, test set "
                                    f"{testset.name}, image {name}"
                                    + (f" ({VARIANT_LABELS[variant]})" if variant else "")
                                    + f": {error}; not scored") from None
            rows[variant].append(score(output, clean, crop, spec.gray))
            restored += 1
            line = progress.update(restored)
            if line and restored < progress.total_steps and jax.process_index() == 0:
              print(f"evaluating step {int(step)}: {line}", flush=True)
            if config.eval.get("save_images", False) and jax.process_index() == 0:
              folder = run_folder.RESTORED_DIR + (f"-{variant}" if variant else "")
              events.write_png(os.path.join(workdir, folder, str(int(step)), spec.name,
                                            testset.name, f"{name}.png"), output)
            if not variant and writer is not None and index < config.eval.samples:
              what = "bicubic" if spec.kind == "sr" else "input"
              writer.image(step, f"eval/{spec.name}/{testset.name}/{name}", labelled_panels([
                  (f"{what} {baseline[-1]['psnr_y']:.2f} dB", shown),
                  (f"output {rows[variant][-1]['psnr_y']:.2f} dB", output), ("target", clean)]))
        if not baseline:
          continue
        for variant in rows:
          entry = mean_entry(rows[variant])
          entry.update({f"input_{k}": v for k, v in mean_entry(baseline).items()})
          entry["num_images"] = len(baseline)
          scored[variant].setdefault(spec.name, {})[testset.name] = entry
      for variant in scored:
        scored[variant].setdefault(spec.name, {})
  results = {"tasks": scored[""], "step": int(step)}
  if others:
    results["variants"] = {name: {"tasks": scored[name]} for name, _, _ in others}
    if ema_params is not None:
      results["ema_decay"] = float(config.optim.get("ema_decay", 0.0))
  if jax.process_index() == 0:
    if writer is not None:
      prefixes = [("eval", results["tasks"])] + [
          (f"eval/{name}", v["tasks"]) for name, v in results.get("variants", {}).items()]
      writer.scalars(step, {f"{prefix}/{t}/{s}/{k}": v for prefix, by_task in prefixes
                            for t, sets in by_task.items() for s, e in sets.items()
                            for k, v in e.items() if k not in COUNTS})
    files.write_json(os.path.join(workdir, results_file or run_folder.results_name(step, final)),
                     results)
    print(format_table(results) + "\n" + describe_sets(testsets, config), flush=True)
  return results


def describe_sets(testsets, config):
  """What the table covers: images per set and the crop (a table of crops is not the paper's)."""
  sets = ", ".join(f"{t.name} {len(t.items)} image{'s' if len(t.items) != 1 else ''}"
                   + (" (photographs' test split)" if t.name == "photos" else "")
                   for t in testsets)
  crop = (f"centre-cropped to at most {config.eval.max_side} px (eval.max_side)"
          if config.eval.max_side else "whole images")
  first = f"; the first {config.eval.max_images} per set" if config.eval.max_images else ""
  return f"covers: {sets}; {crop}{first}"


LABEL_HEIGHT = 14  # pixels of the strip that names a panel (PIL's default font is ~11 high)


def labelled_panels(panels):
  """[(label, (H, W, C) image in [0, 255])] -> one uint8 image: the panels side by side, 4 black
  columns apart, each under a strip with its label (cut at the panel's width)."""
  from PIL import Image, ImageDraw
  h = max(im.shape[0] for _, im in panels)
  out = []
  for label, im in panels:
    im = np.clip(np.round(np.asarray(im, np.float64)), 0, 255).astype(np.uint8)
    strip = Image.new("L", (im.shape[1], LABEL_HEIGHT), 0)
    ImageDraw.Draw(strip).text((2, 1), label, fill=255)
    strip = np.repeat(np.asarray(strip)[..., None], im.shape[2], axis=2)
    body = np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)))
    out.append(np.pad(np.concatenate([strip, body]), ((0, 0), (0, 4), (0, 0))))
  return np.concatenate(out, axis=1)


def format_table(results):
  names = list(results.get("variants", {}))
  extra = "".join(f" {'PSNR ' + VARIANT_LABELS.get(n, n):>11}" for n in names)
  legend = (["x8 = self-ensemble"] if "self_ensemble" in names else []) + (
      [f"EMA = EMA parameters (decay {results['ema_decay']:g})"] if "ema" in names else [])
  # columns as wide as the longest task and set names (denoise_gray_25, Rain100L_test)
  tw = max([12] + [len(t) for t in results["tasks"]])
  sw = max([12] + [len(n) for sets in results["tasks"].values() for n in sets])
  lines = [f"step {results['step']}: Y-channel PSNR (dB) / SSIM; input = the degraded input"
           + "".join(f"; {part}" for part in legend),
           f"{'task':<{tw}} {'test set':<{sw}} {'input PSNR':>10} {'PSNR':>8} {'gain':>7} "
           f"{'SSIM':>7}" + extra]
  for task, sets in results["tasks"].items():
    for name, e in sets.items():
      more = "".join(f" {results['variants'][n]['tasks'][task][name]['psnr_y']:>11.2f}"
                     for n in names)
      lines.append(f"{task:<{tw}} {name:<{sw}} {e['input_psnr_y']:>10.2f} {e['psnr_y']:>8.2f} "
                   f"{e['psnr_y'] - e['input_psnr_y']:>+7.2f} {e['ssim_y']:>7.4f}" + more)
  for task, sets in results["tasks"].items():
    for name, e in sets.items():
      counts = [(e, "input_identical", "inputs"), (e, "identical", "outputs")] + [
          (results["variants"][n]["tasks"][task][name], "identical",
           f"outputs ({VARIANT_LABELS.get(n, n)})") for n in names]
      same = [f"{entry[k]} of {e['num_images']} {what}"
              for entry, k, what in counts if entry.get(k)]
      if same:
        lines.append(f"{task} on {name}: {' and '.join(same)} equal their target (PSNR inf; "
                     f"{metrics.PSNR_CAP:g} dB each in its mean)")
  return "\n".join(lines)
