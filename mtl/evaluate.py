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
Clean HR images are degraded deterministically, per (task, image), with keys independent of the
run's task list, so scratch, joint and fine-tuned runs are scored on identical inputs.
"""
import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mtl import degradations, events, files, metrics, run_folder, tasks


PHOTO_SETS = {"photos": "test", "photos_val": "validation"}  # eval set -> photos split


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
    if entry in PHOTO_SETS:
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
      raise ValueError(f"eval.sets entry {entry!r} is not valid; use 'photos', 'photos_val', 'NAME=PATH' "
                       "(clean HR folder), 'NAME=paired:PATH' (degraded/clean pairs) or "
                       "'NAME=for:TASKS:...' (only for TASKS, e.g. SOTS=for:dehaze:paired:PATH)")
  return entries


def load_testsets(config):
  from mtl.data import benchmarks
  sets = []
  for name, kind, path, selector in parse_sets(config.eval.sets):
    if path is None:
      items = benchmarks.photos_testset(config.data, PHOTO_SETS[name])
    elif kind == "paired":
      items = benchmarks.load_paired_folder(path)
    else:
      items = benchmarks.load_hr_folder(path)
    if config.eval.max_images:
      items = items[:config.eval.max_images]
    if config.eval.max_side:
      items = [tuple([item[0]] + [_center_crop(im, config.eval.max_side) for im in item[1:]])
               for item in items]
    sets.append(TestSet(name, kind, items, selector))
  return sets


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


def restore_image(apply_fn, image, scale, tile=48, overlap=8, tile_batch=32):
  """Whole-image inference: overlapping tile x tile crops, outputs averaged where they overlap."""
  h, w = image.shape[:2]
  padded = np.pad(image, ((0, max(0, tile - h)), (0, max(0, tile - w)), (0, 0)), mode="reflect")
  ph, pw = padded.shape[:2]
  origins = [(y, x) for y in tile_starts(ph, tile, overlap) for x in tile_starts(pw, tile, overlap)]
  tiles = np.stack([padded[y:y + tile, x:x + tile] for y, x in origins]).astype(np.float32)
  canvas = np.zeros((ph * scale, pw * scale, 3), np.float64)
  weight = np.zeros((ph * scale, pw * scale, 1), np.float64)
  t = tile * scale
  for start in range(0, len(tiles), tile_batch):
    chunk = tiles[start:start + tile_batch]
    full = np.zeros((tile_batch,) + chunk.shape[1:], np.float32)  # fixed shape: one compile
    full[:len(chunk)] = chunk
    out = np.asarray(apply_fn(full))[:len(chunk)]
    for (y, x), o in zip(origins[start:start + tile_batch], out):
      canvas[y * scale:y * scale + t, x * scale:x * scale + t] += o
      weight[y * scale:y * scale + t, x * scale:x * scale + t] += 1
  out = (canvas / weight)[:h * scale, :w * scale]
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def input_baseline(spec, degraded):
  """What the degraded input scores: itself, or its MATLAB-bicubic upsampling for SR."""
  if spec.scale == 1:
    return degraded
  up = degradations.imresize(jnp.asarray(degraded, jnp.float32), float(spec.scale))
  return np.asarray(jnp.clip(jnp.round(up), 0, 255)).astype(np.uint8)


def score(output, target, crop_border):
  return {
      "psnr_y": metrics.psnr(output, target, crop_border, y_channel=True),
      "ssim_y": metrics.ssim(output, target, crop_border, y_channel=True),
      "psnr_rgb": metrics.psnr(output, target, crop_border, y_channel=False),
      "ssim_rgb": metrics.ssim(output, target, crop_border, y_channel=False),
  }


def _gather(params):
  if all(getattr(x, "is_fully_addressable", True) for x in jax.tree_util.tree_leaves(params)):
    return jax.device_get(params)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(params, tiled=True)


def evaluate(model, params, config, testsets, workdir, step, writer=None, final=False):
  """Score every task on every applicable test set; write results.json; return the results."""
  params = _gather(params)
  results = {"tasks": {}, "step": int(step)}
  for spec in model.specs:
    jitted = jax.jit(model.apply, static_argnums=1)
    apply_fn = functools.partial(jitted, params, spec.name)
    crop = spec.scale if spec.kind == "sr" else 0
    per_set = {}
    for testset in testsets:
      if not tasks.selects(testset.tasks, spec):
        continue
      rows, baseline = [], []
      for index, (name, degraded, clean) in enumerate(test_pairs(spec, testset, config)):
        clean = clean[:degraded.shape[0] * spec.scale, :degraded.shape[1] * spec.scale]
        output = restore_image(apply_fn, degraded, spec.scale, config.model.patch_size,
                               config.eval.tile_overlap, config.eval.tile_batch)
        rows.append(score(output, clean, crop))
        if config.eval.get("save_images", False) and jax.process_index() == 0:
          events.write_png(os.path.join(workdir, "restored", str(int(step)), spec.name, testset.name,
                                 f"{name}.png"), output)
        baseline.append(score(input_baseline(spec, degraded), clean, crop))
        if writer is not None and index < config.eval.samples:
          writer.image(step, f"eval/{spec.name}/{testset.name}/{name}",
                       _side_by_side(input_baseline(spec, degraded), output, clean))
      if not rows:
        continue
      entry = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
      entry.update({f"input_{k}": float(np.mean([r[k] for r in baseline])) for k in baseline[0]})
      entry["num_images"] = len(rows)
      per_set[testset.name] = entry
    results["tasks"][spec.name] = per_set
  if jax.process_index() == 0:
    if writer is not None:
      writer.scalars(step, {f"eval/{t}/{s}/{k}": v for t, sets in results["tasks"].items()
                            for s, e in sets.items() for k, v in e.items() if k != "num_images"})
    files.write_json(os.path.join(workdir, run_folder.results_name(step, final)), results)
    print(format_table(results), flush=True)
  return results


def _side_by_side(*images):
  h = max(im.shape[0] for im in images)
  padded = [np.pad(im, ((0, h - im.shape[0]), (0, 4), (0, 0))) for im in images]
  return np.concatenate(padded, axis=1)


def format_table(results):
  lines = [f"step {results['step']}: Y-channel PSNR (dB) / SSIM; input = the degraded input",
           f"{'task':<12} {'test set':<12} {'input PSNR':>10} {'PSNR':>8} {'gain':>7} {'SSIM':>7}"]
  for task, sets in results["tasks"].items():
    for name, e in sets.items():
      lines.append(f"{task:<12} {name:<12} {e['input_psnr_y']:>10.2f} {e['psnr_y']:>8.2f} "
                   f"{e['psnr_y'] - e['input_psnr_y']:>+7.2f} {e['ssim_y']:>7.4f}")
  return "\n".join(lines)
