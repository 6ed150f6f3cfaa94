"""Use a saved model on real images: restore a folder (any size, tiled) and score folders against references.

Restoration goes through `evaluate.restore_image`, so a restored file is exactly what evaluation
scores for that input. Scoring uses `mtl.metrics` (BasicSR conventions).
"""
import csv
import functools
import os
import sys

import numpy as np

from mtl import metrics

# jax, orbax and the model are imported where restoring needs them: scoring starts in ~2 s without.


def load_model(workdir, step=None):
  """(config, model, params on one device, step) of a workdir's checkpoint (latest by default)."""
  import jax
  from mtl import checkpoints, run_folder, tasks
  from mtl.models import ipt
  config = run_folder.read_config(workdir)
  model = ipt.IPT(ipt.ModelConfig.from_config(config.model, config.precision),
                  tasks.get_all(config.tasks))
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one), model.abstract_params())
  ckpt_dir = checkpoints.checkpoint_dir_of(workdir)
  if step is not None and not os.path.isdir(os.path.join(ckpt_dir, str(step))):
    saved = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(
        ckpt_dir) else []
    raise ValueError(f"step {step} is not saved in {ckpt_dir}; saved steps: {saved or 'none'}")
  params, step = checkpoints.restore_params(ckpt_dir, abstract, step)
  return config, model, params, int(step)


def restorer(model, params, config, task):
  """image uint8 HWC -> restored uint8 (H*s, W*s, 3), the way evaluation restores it."""
  import jax
  from mtl import evaluate, tasks
  if task not in model.task_names:
    raise ValueError(f"task {task!r} is not in this model; its tasks: {', '.join(model.task_names)}")
  spec = tasks.get(task)
  apply_fn = functools.partial(jax.jit(model.apply, static_argnums=1), params, task)
  return lambda image: evaluate.restore_image(
      apply_fn, image, spec.scale, config.model.patch_size, config.eval.tile_overlap,
      config.eval.tile_batch)


def restore_folder(workdir, task, source, output, step=None, err=sys.stderr):
  """Restore one image file or every image directly in a folder into `output` as <stem>.png.

  Unreadable files are skipped with a warning on `err`; progress (images, rate, ETA) goes there too.
  Returns (written paths, skipped paths).
  """
  from mtl import events, progress as progress_lib
  from mtl.data import folder as folder_lib
  if os.path.isfile(source):
    paths = [source]
  elif os.path.isdir(source):
    paths = folder_lib.list_images(source, recursive=False)
    if not paths:
      raise ValueError(f"no image files directly in --input={source}")
  else:
    raise FileNotFoundError(f"--input={source} is neither a file nor a folder")
  config, model, params, step = load_model(workdir, step)
  restore = restorer(model, params, config, task)
  os.makedirs(output, exist_ok=True)
  print(f"restoring {len(paths)} image(s) with {task} from {workdir} (step {step})", file=err)
  progress = progress_lib.Progress(len(paths), every=1)
  written, skipped = [], []
  for done, path in enumerate(paths, 1):
    try:
      image = folder_lib.read_rgb(path)
    except ValueError as error:
      print(f"warning: skipped: {error}", file=err)
      skipped.append(path)
    else:
      out = os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".png")
      events.write_png(out, restore(image))
      written.append(out)
    line = progress.update(done)
    if line:
      print(line.replace("step ", "image ", 1).replace("steps/s", "images/s"), file=err, flush=True)
  return written, skipped


# ----------------------------------------------------------------------------- scoring


def _match(restored, reference):
  """[(stem, restored path, reference path)] by file stem (else by benchmarks.pair_key)."""
  from mtl.data import benchmarks
  from mtl.data import folder as folder_lib
  stem = lambda p: os.path.splitext(os.path.basename(p))[0]
  ours = folder_lib.list_images(restored, recursive=False)
  refs = folder_lib.list_images(reference, recursive=False)
  if not ours:
    raise ValueError(f"no image files directly in --restored={restored}")
  by_stem = {stem(p): p for p in refs}
  by_key = {benchmarks.pair_key(stem(p)): p for p in refs}
  pairs = []
  for path in ours:
    # Exact names first; then names as benchmarks pair them (babyx2 ~ baby, rain-001 ~ norain-001).
    partner = by_stem.get(stem(path)) or by_key.get(benchmarks.pair_key(stem(path)))
    if partner is None:
      raise ValueError(f"{path} has no partner in --reference={reference} (matched by file name)")
    pairs.append((stem(path), path, partner))
  return pairs


def score_folders(restored, reference, crop_border=0, y_channel=True, mod_crop=0):
  """Per-image PSNR / SSIM of each restored image against its reference: [dict], mean dict."""
  from mtl.data import benchmarks
  from mtl.data import folder as folder_lib
  rows = []
  for name, ours_path, ref_path in _match(restored, reference):
    ours, ref = folder_lib.read_rgb(ours_path), folder_lib.read_rgb(ref_path)
    if mod_crop:
      ref = benchmarks.mod_crop(ref, mod_crop)
    if ours.shape != ref.shape:
      raise ValueError(f"{ours_path} is {ours.shape[1]}x{ours.shape[0]} but {ref_path} is "
                       f"{ref.shape[1]}x{ref.shape[0]}; for SR references pass --mod_crop=SCALE")
    rows.append({"image": name,
                 "psnr": metrics.psnr(ours, ref, crop_border, y_channel=y_channel),
                 "ssim": metrics.ssim(ours, ref, crop_border, y_channel=y_channel)})
  mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim")}
  return rows, mean


def write_csv(path, rows):
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["image", "psnr", "ssim"])
    writer.writeheader()
    writer.writerows(rows)


def format_scores(rows, mean, y_channel=True):
  channel = "Y" if y_channel else "RGB"
  lines = [f"{'image':<24} {'PSNR ' + channel:>9} {'SSIM ' + channel:>9}"]
  lines += [f"{r['image']:<24} {r['psnr']:>9.2f} {r['ssim']:>9.4f}" for r in rows]
  lines.append(f"{'mean (' + str(len(rows)) + ' images)':<24} {mean['psnr']:>9.2f} "
               f"{mean['ssim']:>9.4f}")
  return "\n".join(lines)
