"""IPT's published tables (Chen et al., CVPR 2021) beside what mtl measures with the released weights.

  python launch/import_ipt.py --checkpoint=IPT_sr2.pt --workdir=/ckpt/ipt_sr2     # once per file
  python launch/ipt_published.py --benchmark=/data/benchmark \
      --workdir=/ckpt/ipt_sr2 --workdir=/ckpt/ipt_sr3 ... [--max_images=N] [--save_images]

Each workdir's tasks are scored on their sets (SR: Set5, Set14, B100, Urban100; denoising: CBSD68;
deraining: Rain100L), found under --benchmark as <Set>/HR or <Set> (clean images; Rain100L as
rainy/clean pairs); missing sets are listed and skipped. As in mtl.evaluate, SR inputs are the
MATLAB-bicubic downscaling of the mod-cropped HR image and noisy inputs get fixed Gaussian noise
(not the paper's noise draw), whole images by overlapping 48 x 48 tiles. The paper reports Y-channel
PSNR (SR: `scale` border pixels cropped); RGB PSNR is shown beside it. Results also go to
<workdir>/results-<step>-<task>.json; --save_images writes the restorations under <workdir>/restored/.
"""
import os

import _root  # noqa: F401  (repository root on sys.path)
import cli
from absl import app, flags, logging

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

flags.DEFINE_string("benchmark", None, "Folder holding Set5, Set14, B100, Urban100, CBSD68, Rain100L.")
flags.DEFINE_multi_string("workdir", None, "Imported (or trained) workdir; repeat for several.")
flags.DEFINE_integer("max_images", 0, "Score only the first N images of each set (0: all).",
                     lower_bound=0)
flags.DEFINE_bool("save_images", False, "Also write the restored PNGs under <workdir>/restored/.")


def find_set(benchmark, name):
  """The folder of a test set under `benchmark` (<name>/HR or <name>), or None."""
  for path in (os.path.join(benchmark, name, "HR"), os.path.join(benchmark, name)):
    if os.path.isdir(path):
      return path
  return None


def evaluate_workdir(workdir, benchmark, max_images=0, save_images=False):
  """[(task, set, mtl result dict or None, published PSNR or None)] for one workdir."""
  from mtl import evaluate, restore, tasks
  from mtl.models import ipt
  config, model, params, step = restore.load_model(workdir)
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
    config.eval.save_images = save_images
    one = ipt.IPT(model.cfg, tasks.get_all([spec.name]))  # evaluate this task only
    task_params = {"body": params["body"], **{group: {spec.name: params[group][spec.name]}
                                              for group in ("heads", "queries", "tails")}}
    results = evaluate.evaluate(one, task_params, config, evaluate.load_testsets(config),
                                workdir, step)
    written = os.path.join(workdir, f"results-{step:09d}.json")
    if os.path.exists(written):  # one file per task, not overwritten by the next task
      os.replace(written, os.path.join(workdir, f"results-{step:09d}-{spec.name}.json"))
    rows += [(spec.name, name, results["tasks"][spec.name].get(name), wanted[name])
             for name in wanted]
  return rows


def format_table(rows):
  lines = ["IPT (Chen et al. 2021) published vs mtl with the released weights: PSNR (dB)",
           f"{'task':<11} {'set':<9} {'paper Y':>8} {'mtl Y':>7} {'diff':>6} {'mtl RGB':>8} "
           f"{'SSIM Y':>7} {'images':>6}"]
  for task, name, result, paper in rows:
    mark = "?" if (task, name) in UNSURE else " "
    paper_text = f"{paper:>7.2f}{mark}" if paper is not None else f"{'-':>8}"
    if result is None:
      lines.append(f"{task:<11} {name:<9} {paper_text} {'(no data)':>7}")
      continue
    diff = f"{result['psnr_y'] - paper:+6.2f}" if paper is not None else f"{'':>6}"
    lines.append(f"{task:<11} {name:<9} {paper_text} {result['psnr_y']:>7.2f} {diff} "
                 f"{result['psnr_rgb']:>8.2f} {result['ssim_y']:>7.4f} {result['num_images']:>6}")
  if any((t, n) in UNSURE for t, n, _, _ in rows):
    lines.append("? = published value not checked against the paper here")
  return "\n".join(lines)


@cli.absl_main
def main():
  f = flags.FLAGS
  if not f.benchmark or not os.path.isdir(f.benchmark):
    raise ValueError(f"--benchmark={f.benchmark} is not a folder; point it to the one holding "
                     "Set5, Set14, B100, Urban100, CBSD68, Rain100L")
  if not f.workdir:
    raise ValueError("pass --workdir=<imported workdir> (repeat it for several)")
  rows = []
  for workdir in f.workdir:
    rows += evaluate_workdir(workdir, f.benchmark, f.max_images, f.save_images)
  print(format_table(rows), flush=True)


if __name__ == "__main__":
  app.run(main)
