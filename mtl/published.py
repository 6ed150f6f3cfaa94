"""IPT's published tables (Chen et al., CVPR 2021) and mtl's scores of imported workdirs beside
them: which benchmark sets each task is scored on, the evaluation, and the table.

launch/ipt_published.py is the command; see its docstring for the protocol.
"""
import os

from absl import logging


# Y-channel PSNR (dB) of IPT in the paper. `sure`: False where the value is recalled from the
# paper's tables rather than checked against a copy (the SR rows match the official README).
PUBLISHED = {
    "sr_x2": {"Set5": 38.37, "Set14": 34.43, "B100": 32.48, "Urban100": 33.76},
    "sr_x3": {"Set5": 34.81, "Set14": 30.85, "B100": 29.38, "Urban100": 29.49},
    "sr_x4": {"Set5": 32.64, "Set14": 29.01, "B100": 27.82, "Urban100": 27.26},
    "denoise_30": {"CBSD68": 32.32},
    "denoise_50": {"CBSD68": 29.88},
    "derain": {"Rain100L": 41.62},
}
UNSURE = {("denoise_30", "CBSD68"), ("denoise_50", "CBSD68")}
PAIRED_SETS = ("Rain100L",)


def find_set(benchmark, name):
  """The folder of a test set under `benchmark` (<name>/HR or <name>), or None; a paired set
  also beside it (IPT's README puts Rain100L at $DATA_PATH/Rain100L, next to benchmark/)."""
  places = [benchmark] + ([os.path.dirname(os.path.normpath(benchmark))]
                          if name in PAIRED_SETS else [])
  for path in (p for place in places for p in (os.path.join(place, name, "HR"),
                                               os.path.join(place, name))):
    if os.path.isdir(path):
      return path
  return None


def check_workdirs(workdirs, overwrite=False, save_images=False):
  """Refuse (ValueError, one line) before any scoring: a workdir given twice, one without a
  config.json or a checkpoint, or one that holds an earlier scoring's
  results-<step>-<task>.json or, with `save_images`, images under restored/<step>/<task>/ (the
  run's own evaluation writes there too) (unless `overwrite`)."""
  from mtl import checkpoints, run_folder
  seen = set()
  for workdir in workdirs:
    real = os.path.realpath(workdir)
    if real in seen:
      raise ValueError(f"--workdir={workdir} is given twice; give each workdir once")
    seen.add(real)
    names = run_folder.read_config(workdir).tasks  # each workdir before any is scored
    step = checkpoints.latest_saved_step(workdir)
    if step is None:
      raise ValueError(f"--workdir={workdir} holds no checkpoint to score; give a trained or "
                       "imported workdir (launch/import_ipt.py)")
    results = [run_folder.results_name(step, False, task) for task in names]
    existing = [n for n in results if os.path.exists(os.path.join(workdir, n))]
    if save_images:
      folders = [os.path.join(run_folder.RESTORED_DIR, str(step), task) for task in names]
      existing += [f + "/" for f in folders if os.path.isdir(os.path.join(workdir, f))
                   and os.listdir(os.path.join(workdir, f))]
    if existing and not overwrite:
      raise ValueError(f"{workdir} already holds {', '.join(existing)}; pass --overwrite to "
                       "replace them")


def evaluate_workdir(workdir, benchmark, max_images=0, save_images=False, overwrite=False):
  """[(task, set, mtl result dict or None, published PSNR or None)] for one workdir, each task's
  scores written to its results-<step>-<task>.json (refused before any work where one exists,
  unless `overwrite`)."""
  from mtl import evaluate, restoration, run_folder, tasks
  from mtl.models import ipt
  check_workdirs([workdir], overwrite, save_images)
  config, model, params, step = restoration.load_model(workdir)
  names = {spec.name: run_folder.results_name(step, False, spec.name) for spec in model.specs}
  rows = []
  for spec in model.specs:
    wanted = PUBLISHED.get(spec.name, {})
    found = {name: find_set(benchmark, name) for name in wanted}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
      logging.warning("%s: no %s under %s; skipped", spec.name, ", ".join(missing), benchmark)
    entries = [f"{name}=paired:{path}" if name in PAIRED_SETS else f"{name}={path}"
               for name, path in found.items() if path]
    if not entries:
      rows += [(spec.name, name, None, wanted[name]) for name in wanted]
      continue
    config.eval.sets = ",".join(entries)
    config.eval.max_images = max_images
    config.eval.max_side = 0  # whole images, as the paper's tables (a run's config may crop)
    config.eval.save_images = save_images
    config.eval.tiling = "ipt"  # the tables come from the official test's tiling (forward_chop)
    one = ipt.IPT(model.cfg, tasks.get_all([spec.name]))  # evaluate this task only
    task_params = {"body": params["body"], **{group: {spec.name: params[group][spec.name]}
                                              for group in ("heads", "queries", "tails")}}
    results = evaluate.evaluate(one, task_params, config, evaluate.load_testsets(config),
                                workdir, step, results_file=names[spec.name])
    rows += [(spec.name, name, results["tasks"][spec.name].get(name), wanted[name])
             for name in wanted]
  return rows


def weights_label(workdir):
  """The file an imported workdir came from (imported.json), else the workdir's name."""
  from mtl import files, run_folder
  path = os.path.join(workdir, run_folder.IMPORT_RECORD)
  source = files.read_json(path).get("source", "") if os.path.isfile(path) else ""
  return os.path.basename(str(source)) or os.path.basename(os.path.normpath(workdir))


def format_table(groups):
  """`groups`: [(weights label, evaluate_workdir's rows)] -> the table, a row per weights, task
  and set (the label tells two workdirs' rows of one task and set apart)."""
  width = max([7] + [len(label) for label, _ in groups])
  lines = ["IPT (Chen et al. 2021) published vs mtl with the released weights: PSNR (dB)",
           f"{'weights':<{width}} {'task':<11} {'set':<9} {'paper Y':>8} {'mtl Y':>7} {'diff':>6} "
           f"{'mtl RGB':>8} {'SSIM Y':>7} {'images':>6}"]
  unsure = False
  for label, rows in groups:
    for task, name, result, paper in rows:
      unsure |= (task, name) in UNSURE
      mark = "?" if (task, name) in UNSURE else " "
      paper_text = f"{paper:>7.2f}{mark}" if paper is not None else f"{'-':>8}"
      start = f"{label:<{width}} {task:<11} {name:<9} {paper_text}"
      if result is None:
        lines.append(f"{start} {'(no data)':>7}")
        continue
      diff = f"{result['psnr_y'] - paper:+6.2f}" if paper is not None else f"{'':>6}"
      lines.append(f"{start} {result['psnr_y']:>7.2f} {diff} {result['psnr_rgb']:>8.2f} "
                   f"{result['ssim_y']:>7.4f} {result['num_images']:>6}")
  if unsure:
    lines.append("? = published value not checked against the paper here")
  return "\n".join(lines)
