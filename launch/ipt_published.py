"""IPT's published tables (Chen et al., CVPR 2021) beside what mtl measures with the released weights.

  python launch/import_ipt.py --checkpoint=IPT_sr2.pt --workdir=/ckpt/ipt_sr2     # once per file
  python launch/ipt_published.py --benchmark=/data/benchmark \
      --workdir=/ckpt/ipt_sr2 --workdir=/ckpt/ipt_sr3 ... [--max_images=N] [--save_images]

Each workdir's tasks are scored on their sets (SR: Set5, Set14, B100, Urban100; denoising: CBSD68;
deraining: Rain100L), found under --benchmark as <Set>/HR or <Set> (clean images; Rain100L as
rainy/clean pairs, also beside --benchmark, where IPT's README puts it); missing sets are listed
and skipped. As in mtl.evaluate, SR inputs are the
MATLAB-bicubic downscaling of the mod-cropped HR image and noisy inputs get fixed Gaussian noise
(not the paper's noise draw), whole images by 48 x 48 tiles as the official test places and blends
them (its forward_chop: config.eval.tiling='ipt'). The paper reports Y-channel
PSNR (SR: `scale` border pixels cropped); RGB PSNR is shown beside it. Results also go to
<workdir>/results-<step>-<task>.json (an earlier scoring's are kept unless --overwrite);
--save_images writes the restorations under <workdir>/restored/<step>/<task>/ (refused where
images are there already, the run's own or an earlier scoring's, unless --overwrite).
"""
import os

import _root  # noqa: F401  (repository root on sys.path)
import cli
from absl import app, flags

flags.DEFINE_string("benchmark", None, "Folder holding Set5, Set14, B100, Urban100, CBSD68, Rain100L.")
flags.DEFINE_multi_string("workdir", None, "Imported (or trained) workdir; repeat for several.")
flags.DEFINE_integer("max_images", 0, "Score only the first N images of each set (0: all).",
                     lower_bound=0)
flags.DEFINE_bool("save_images", False, "Also write the restored PNGs under <workdir>/restored/.")
flags.DEFINE_bool("overwrite", False, "Replace a workdir's results-<step>-<task>.json of an "
                  "earlier scoring, and with --save_images its restored/<step>/<task>/ images "
                  "(refused otherwise).")


@cli.absl_main
def main():
  from mtl import published
  f = flags.FLAGS
  if not f.benchmark or not os.path.isdir(f.benchmark):
    raise ValueError(f"--benchmark={f.benchmark} is not a folder; point it to the one holding "
                     "Set5, Set14, B100, Urban100, CBSD68, Rain100L")
  if not f.workdir:
    raise ValueError("pass --workdir=<imported workdir> (repeat it for several)")
  # every workdir is checked before the first is scored: a refusal after hours of scoring
  # would lose the table and make a rerun refuse the workdirs already scored
  published.check_workdirs(f.workdir, f.overwrite, f.save_images)
  groups = [(published.weights_label(workdir),
             published.evaluate_workdir(workdir, f.benchmark, f.max_images, f.save_images,
                                        f.overwrite)) for workdir in f.workdir]
  print(published.format_table(groups), flush=True)
  if all(result is None for _, rows in groups for _, _, result, _ in rows):
    raise ValueError(f"--benchmark={f.benchmark} holds none of the sets these tasks are scored "
                     "on (<Set>/HR or <Set>: Set5, Set14, B100, Urban100, CBSD68, Rain100L)")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
