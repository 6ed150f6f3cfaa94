"""Use a saved model on real images: restore a folder (any size, tiled) and score folders against references.

Restoration goes through `evaluate.restore_image`, so a restored file is exactly what evaluation
scores for that input. Scoring uses `mtl.metrics` (BasicSR conventions).
"""
import csv
import io
import os
import sys

import numpy as np

from mtl import files, metrics

# jax, orbax and the model are imported where restoring needs them: scoring starts in ~2 s without.


def load_model(workdir, step=None, ema=False):
  """(config, model, params on one device, step) of a workdir's checkpoint (latest by default);
  ema: its EMA parameters (runs with config.optim.ema_decay > 0)."""
  import jax
  from mtl import checkpoints, run_folder, tasks
  from mtl.models import ipt
  config = run_folder.read_config(workdir)
  model = ipt.IPT(ipt.ModelConfig.from_config(config.model, config.precision),
                  tasks.get_all(config.tasks))
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree_util.tree_map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=one),
      run_folder.saved_params(config, model))
  params, step = checkpoints.restore_params(workdir, abstract, step,
                                            "ema_params" if ema else "params")
  params.pop("loss_weighting", None)  # the training's, not the model's
  return config, model, params, int(step)


def restorer(model, params, config, task, self_ensemble=False, on_tiles=None):
  """image uint8 HWC -> restored uint8 (H*s, W*s, 3), the way evaluation restores it (with
  self_ensemble, as config.eval.self_ensemble scores it: the x8 flips and rotations averaged;
  derain and dehaze: the image and its mirror); on_tiles(n, total) after each n of the image's
  total tiles restored."""
  from mtl import evaluate, tasks
  if task not in model.task_names:
    raise ValueError(f"task {task!r} is not in this model; its tasks: {', '.join(model.task_names)}")
  spec = tasks.get(task)
  mesh = evaluate.local_mesh()
  run_tiles = evaluate.tile_runner(model, evaluate.local_params(params, mesh), task,
                                   config.eval.tile_batch, mesh)
  tiling = config.eval.get("tiling", "centre")
  total = [0]  # the image's tiles
  def apply_tiles(tiles):
    out = run_tiles(tiles)
    if on_tiles is not None:
      on_tiles(len(tiles), total[0])
    return out
  def restore(image):
    total[0] = evaluate.tile_count(*image.shape[:2], config.model.patch_size,
                                   config.eval.tile_overlap, tiling, self_ensemble, spec.kind)
    return evaluate.restore_image(apply_tiles, image, spec.scale, config.model.patch_size,
                                  config.eval.tile_overlap, tiling, self_ensemble, spec.kind)
  return restore


def _names(paths, limit=4):
  names = [os.path.basename(p) for p in paths]
  return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def plan_outputs(paths, source, output, overwrite=False):
  """[output path per input path]: <output>/<stem>.png, refusing (ValueError, one line, before
  anything is written) an output folder that is the input folder or inside it, two inputs with one
  output (x.png and x.jpg), and, unless `overwrite`, outputs that already exist."""
  files.check_not_a_file(output, "--output", "a folder for the restored PNGs")
  source_dir = os.path.realpath(source if os.path.isdir(source) else os.path.dirname(source) or ".")
  output_dir = os.path.realpath(output)
  if os.path.isdir(source) and (output_dir == source_dir or output_dir.startswith(
      source_dir + os.sep)):
    where = "is" if output_dir == source_dir else "is inside"
    raise ValueError(f"--output={output} {where} --input={source}; restored images would mix "
                     "with (or replace) the inputs: choose an --output outside it")
  outs = [os.path.join(output, os.path.splitext(os.path.basename(p))[0] + ".png") for p in paths]
  if os.path.isfile(source) and os.path.realpath(outs[0]) == os.path.realpath(source):
    raise ValueError(f"--output={output} would replace --input={source} itself: choose another "
                     "--output")
  inputs = {os.path.realpath(p): p for p in paths}  # an input may be a link into --output
  replaced = [f"{inputs[os.path.realpath(out)]} -> {out}" for out in outs
              if os.path.realpath(out) in inputs]
  if replaced:
    raise ValueError(f"--output={output} would replace an input, even with --overwrite: "
                     f"{'; '.join(replaced[:3])}{' ...' if len(replaced) > 3 else ''} (an input "
                     "links to that file); choose another --output")
  by_out = {}
  for path, out in zip(paths, outs):
    by_out.setdefault(out, []).append(path)
  clashes = [f"{_names(ins)} -> {os.path.basename(out)}" for out, ins in by_out.items()
             if len(ins) > 1]
  if clashes:
    raise ValueError(f"--input={source} holds files with the same stem, whose results would "
                     f"share one output (<stem>.png): {'; '.join(clashes[:3])}"
                     f"{' ...' if len(clashes) > 3 else ''}; rename them or restore them apart")
  existing = [out for out in outs if os.path.exists(out)]
  if existing and not overwrite:
    raise ValueError(f"--output={output} already holds {_names(existing)} ({len(existing)} of the "
                     f"{len(outs)} outputs); pass --overwrite to replace them, or choose another "
                     "--output")
  return outs, existing


def restore_folder(workdir, task, source, output, step=None, err=sys.stderr, overwrite=False,
                   self_ensemble=False, ema=False):
  """Restore one image file or every image directly in a folder into `output` as <stem>.png
  (self_ensemble: the x8 flips and rotations averaged; ema: the run's EMA parameters).

  Refuses (see `plan_outputs`) before reading the model whenever a result could replace an input,
  another result, or (without `overwrite`) an existing file. Unreadable files are skipped with a
  warning on `err`; progress (images, rate, ETA) goes there too.
  Returns (written paths, skipped paths).
  """
  from mtl import events, progress as progress_lib
  from mtl.data import folder as folder_lib
  if os.path.isfile(source):
    folder_lib.read_rgb(source)  # one unreadable input: refused before the model loads
    paths = [source]
  elif os.path.isdir(source):
    paths = folder_lib.list_images(source, recursive=False)
    if not paths:
      raise ValueError(f"no image files directly in --input={source}")
  else:
    raise FileNotFoundError(f"--input={source} is neither a file nor a folder")
  outs, existing = plan_outputs(paths, source, output, overwrite)
  config, model, params, step = load_model(workdir, step, ema)
  from mtl import tasks
  tiles = {}  # the image's tile progress: a line every 10 s for an image that takes that long
  def on_tiles(n, total):
    if tiles["progress"] is None:
      tiles["progress"] = progress_lib.Progress(total, every_seconds=10, unit="tile")
    tiles["done"] += n
    line = tiles["progress"].update(tiles["done"])
    if line and tiles["done"] < total:  # the image's own line ends it
      print(f"{tiles['name']}: {line}", file=err, flush=True)
  restore = restorer(model, params, config, task, self_ensemble, on_tiles)
  gray = tasks.get(task).gray  # after restorer: it names a task the model lacks
  os.makedirs(output, exist_ok=True)
  print(f"restoring {len(paths)} image(s) with {task} from {workdir} (step {step})"
        + (f"; replacing {len(existing)} existing file(s) in {output}" if existing else ""),
        file=err)
  progress = progress_lib.Progress(len(paths), every=1, unit="image")
  written, skipped = [], []
  for done, (path, out) in enumerate(zip(paths, outs), 1):
    try:
      image = folder_lib.read_rgb(path)
    except ValueError as error:
      print(f"warning: skipped: {error}", file=err)
      skipped.append(path)
    else:
      for note in _input_notes(path, image, task, gray):
        print(f"warning: {path}: {note}", file=err)
      if gray:  # as evaluation feeds it: the grey plane in three equal channels
        image = np.repeat(metrics.grey_plane(image).astype(np.uint8), 3, axis=-1)
      tiles.update(name=os.path.basename(path), done=0, progress=None)
      try:
        restored = restore(image)
      except ValueError as error:  # a non-finite output: stop, naming the image
        raise ValueError(f"{path}: {error}; nothing written for it") from None
      try:  # without --overwrite, a file another process wrote there meanwhile is kept
        events.write_png(out, restored, replace=overwrite)
      except FileExistsError:
        raise ValueError(f"{out} appeared while this restore ran (another process writes into "
                         f"--output={output}?); it is kept and nothing more is written "
                         f"({len(written)} image(s) written before it): choose another --output, "
                         "or pass --overwrite") from None
      written.append(out)
    line = progress.update(done)
    if line:
      print(line, file=err, flush=True)
  return written, skipped


def _input_notes(path, image, task, gray):
  """What restoring `image` (read from `path`) changes without a word otherwise: transparency
  dropped; 16-bit samples rounded to 8; an EXIF orientation not applied; colour given to a grey
  model (restored on its grey plane)."""
  from PIL import Image
  from mtl.data import folder as folder_lib
  notes = []
  with Image.open(path) as original:
    if original.mode in ("RGBA", "LA", "PA") or "transparency" in original.info:
      if (np.asarray(original.convert("RGBA"))[..., 3] < 255).any():
        notes.append("its transparency is dropped (the output is opaque RGB: transparent "
                     "pixels come back as the colour stored under them)")
    if folder_lib.more_than_8_bits(original):
      notes.append("its 16-bit samples are restored and written as 8-bit (as the model and "
                   "the metrics read every image)")
    orientation = original.getexif().get(0x0112, 1)  # EXIF Orientation
    if orientation not in (1, None):
      notes.append(f"its EXIF orientation ({orientation}) is not applied: the output is "
                   "written as the pixels are stored, which a viewer may show turned")
  if gray and not metrics.is_grey(image):
    notes.append(f"a colour image given to {task}, a grey model: restored on its grey plane "
                 "(BT.601 luminance), as evaluation feeds it")
  return notes


# ----------------------------------------------------------------------------- scoring


def _match(restored, reference):
  """([(stem, restored path, reference path)], unpaired reference paths).

  Exact stems pair first; the rest pair as benchmarks name them (babyx2 ~ baby, rain-001 ~
  norain-001), each reference with at most one restored image. A restored image without its own
  partner is refused (ValueError, one line).
  """
  from mtl.data import benchmarks
  from mtl.data import folder as folder_lib
  stem = lambda p: os.path.splitext(os.path.basename(p))[0]
  ours = folder_lib.list_images(restored, recursive=False)
  refs = folder_lib.list_images(reference, recursive=False)
  if not ours:
    raise ValueError(f"no image files directly in --restored={restored}")
  for flag, paths in (("restored", ours), ("reference", refs)):  # baby.png and baby.bmp
    seen = {}
    for p in paths:
      if seen.setdefault(stem(p), p) != p:
        raise ValueError(f"--{flag} holds {os.path.basename(seen[stem(p)])} and "
                         f"{os.path.basename(p)}: one name, two images; keep one of them")
  by_stem = {stem(p): p for p in refs}
  partner = {p: by_stem[stem(p)] for p in ours if stem(p) in by_stem}
  paired_with = {ref: path for path, ref in partner.items()}
  for path in ours:
    if path in partner:
      continue
    ref_keys = {r: benchmarks.pair_keys(stem(r))[0] for r in refs}
    same_key = []
    # strictest first: 'babyx2' -> 'baby'; a SOTS hazy image's name '1400_3' -> clear 1400
    for key in benchmarks.pair_keys(stem(path)) + [benchmarks.reside_key(stem(path))]:
      same_key = same_key or [r for r in refs if ref_keys[r] == key]
    free = [r for r in same_key if r not in paired_with]
    if len(free) > 1:
      raise ValueError(f"{path} could pair with {_names(free)} in --reference={reference}; "
                       "name it as its reference")
    if not free:
      taken = (f": {_names(same_key)} is paired with {_names([paired_with[r] for r in same_key])}"
               if same_key else " (matched by file name)")
      raise ValueError(f"{path} has no partner in --reference={reference}{taken}")
    partner[path] = free[0]
    paired_with[free[0]] = path
  pairs = [(stem(p), p, partner[p]) for p in ours]
  return pairs, [r for r in refs if r not in paired_with]


def score_pair(ours, ref, crop_border=0, y_channel=True, grey_plane=False):
  """{'psnr', 'ssim', 'channel'} of one restored image against its reference (uint8 HWC).

  'Y' or 'RGB' as `y_channel` says; with `grey_plane`, a grey reference (a grey file, or R == G ==
  B everywhere) and its restored image are scored on the grey plane (a colour output's: its
  rounded luma), channel 'grey', as evaluation scores grey denoising (`evaluate.score`).
  """
  channel = "Y" if y_channel else "RGB"
  if grey_plane and metrics.is_grey(ref):  # a grey task's RGB output is near grey, rarely exactly
    # Y of equal channels is 16 + 219/255 v: it would shrink every error and add 1.32 dB.
    ours, ref, channel = metrics.grey_plane(ours), metrics.grey_plane(ref), "grey"
  return {"psnr": metrics.psnr(ours, ref, crop_border, y_channel=y_channel),
          "ssim": metrics.ssim(ours, ref, crop_border, y_channel=y_channel), "channel": channel}


def mean_scores(rows):
  """{'psnr', 'ssim', 'identical'}: mean PSNR (an identical pair at `metrics.PSNR_CAP`) and SSIM
  over all pairs, and how many pairs are identical."""
  psnr, identical = metrics.mean_psnr([r["psnr"] for r in rows])
  return {"psnr": psnr, "ssim": float(np.mean([r["ssim"] for r in rows])),
          "identical": identical}


def score_folders(restored, reference, crop_border=0, y_channel=True, mod_crop=0, err=sys.stderr,
                  grey_plane=False):
  """Per-image PSNR / SSIM of each restored image against its reference (`score_pair`): [dict],
  and their means (`mean_scores`, with 'grey': how many references are grey).

  References without a restored partner are named in one warning line on `err`.
  """
  from mtl.data import benchmarks
  from mtl.data import folder as folder_lib
  rows = []
  pairs, unpaired = _match(restored, reference)
  if unpaired:
    print(f"warning: {len(unpaired)} of {len(pairs) + len(unpaired)} reference image(s) have no "
          f"restored partner and are not scored: {_names(unpaired)}", file=err, flush=True)
  grey = 0
  for name, ours_path, ref_path in pairs:
    ours, ref = folder_lib.read_rgb(ours_path), folder_lib.read_rgb(ref_path)
    if mod_crop > min(ref.shape[:2]):
      raise ValueError(f"--mod_crop={mod_crop} is larger than {ref_path} ({ref.shape[1]}x"
                       f"{ref.shape[0]}); give the SR scale (2, 3 or 4)")
    if mod_crop:
      ref = benchmarks.mod_crop(ref, mod_crop)
    if ours.shape != ref.shape:
      hint = (f" after --mod_crop={mod_crop}: is {mod_crop} these images' SR scale?" if mod_crop
              else "; for SR references pass --mod_crop=SCALE")
      raise ValueError(f"{ours_path} is {ours.shape[1]}x{ours.shape[0]} but {ref_path} is "
                       f"{ref.shape[1]}x{ref.shape[0]}{hint}")
    try:
      rows.append({"image": name, **score_pair(ours, ref, crop_border, y_channel, grey_plane)})
    except ValueError as error:  # too small for SSIM after the crop
      raise ValueError(f"{ours_path}: {error}") from None
    grey += metrics.is_grey(ref)
  return rows, {**mean_scores(rows), "grey": grey}


def check_new_file(path, flag, overwrite=False, inputs=()):
  """Refuse (ValueError, one line) an output file inside one of the `inputs` {flag: folder}
  (whatever `overwrite` says), one that would replace a file unless `overwrite` (never a
  folder), and one with no folder to go into."""
  real = os.path.realpath(path)
  for name, folder in dict(inputs).items():
    if real.startswith(os.path.realpath(folder) + os.sep):
      raise ValueError(f"{flag}={path} is inside {name}={folder}, an input: choose a file "
                       "outside it")
  if os.path.isdir(path):
    raise ValueError(f"{flag}={path} is a folder; name a file to write")
  if os.path.exists(path) and not overwrite:
    raise ValueError(f"{flag}={path} already exists; pass --overwrite to replace it, or choose "
                     "another file")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ValueError(f"{flag}={path}: its folder {folder} does not exist (or is a file)")


def write_csv(path, rows):
  """Per-image scores as CSV (image, psnr, ssim, channel), written atomically (complete or
  absent)."""
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=["image", "psnr", "ssim", "channel"])
  writer.writeheader()
  writer.writerows(rows)
  files.write_atomic(path, lambda f: f.write(text.getvalue().encode()))


def format_scores(rows, mean):
  """The table `launch/score.py` prints: a line per image, the means, and notes on grey and
  identical pairs."""
  channels = sorted({r["channel"] for r in rows})
  mixed = len(channels) > 1   # grey and colour pairs: the channel goes on each line instead
  label = "" if mixed else " " + channels[0]
  lines = [f"{'image':<24} {'PSNR' + label:>9} {'SSIM' + label:>9}"
           + ("  channel" if mixed else "")]
  lines += [f"{r['image']:<24} {r['psnr']:>9.2f} {r['ssim']:>9.4f}"
            + (f"  {r['channel']}" if mixed else "") for r in rows]
  lines.append(f"{'mean (' + str(len(rows)) + ' images)':<24} {mean['psnr']:>9.2f} "
               f"{mean['ssim']:>9.4f}")
  on_plane = sum(r["channel"] == "grey" for r in rows)
  if on_plane:
    lines.append(f"{on_plane} of {len(rows)} pair(s) grey: scored on the grey plane, as mtl's "
                 "evaluation scores grey denoising (their Y PSNR would read 1.32 dB higher)")
  elif mean.get("grey"):
    lines.append(f"{mean['grey']} of {len(rows)} reference(s) grey: scored on the "
                 f"{rows[0]['channel']} of their three equal channels, as BasicSR and IPT score SR "
                 "and mtl's evaluation every task but grey denoising; for grey denoising "
                 "(DnCNN's grey PSNR, 1.32 dB lower on Y) pass --grey_plane")
  if mean["identical"]:
    lines.append(f"{mean['identical']} of {len(rows)} pair(s) identical (PSNR inf): "
                 f"{metrics.PSNR_CAP:g} dB each in the mean PSNR")
  return "\n".join(lines)
