"""Restore real images with a saved model: any size (overlapping tiles), PNG out, same file names.

  python launch/restore.py --workdir=/ckpt/ipt_sr2 --task=sr_x2 --input=photos/ --output=out/ \
      [--step=N] [--self_ensemble] [--ema]

--input is one image or a folder (its images, not its subfolders). Uses the workdir's latest
checkpoint (or --step). Progress (images, rate, ETA) on stderr; unreadable files are skipped with a
warning, the rest are restored, and the run ends with one line naming them (exit status 1). Nothing is written (one line on stderr, exit status 1) when
--output is --input or inside it, when two inputs share a stem (x.png, x.jpg -> x.png), or when
--output already holds a result's name (unless --overwrite). Bad input: one line, exit status 1.
"""
import os

import _root  # noqa: F401  (repository root on sys.path for `mtl`)
import cli
from absl import app, flags

flags.DEFINE_string("workdir", None, "A run's (or an imported IPT) workdir.")
flags.DEFINE_string("task", None, "Task to apply, one of the workdir's tasks (e.g. sr_x2).")
flags.DEFINE_string("input", None, "An image file or a folder of images.")
flags.DEFINE_string("output", None, "Folder for the restored PNGs.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_bool("overwrite", False, "Replace files of the same name already in --output "
                  "(refused otherwise).")
flags.DEFINE_bool("self_ensemble", False, "Average the x8 flips and rotations of each image "
                  "(EDSR's '+', IPT's --self_ensemble; derain and dehaze: the image and its "
                  "left-right mirror); up to 8 times the work.")
flags.DEFINE_bool("ema", False, "Use the run's EMA parameters (trained with "
                  "config.optim.ema_decay > 0).")
flags.mark_flags_as_required(["task"])
cli.required_paths("workdir", "input", "output")


@cli.absl_main
def main():
  from mtl import restoration
  f = flags.FLAGS
  written, skipped = restoration.restore_folder(f.workdir, f.task, f.input, f.output, f.step,
                                                overwrite=f.overwrite,
                                                self_ensemble=f.self_ensemble, ema=f.ema)
  if skipped:  # the readable ones are written; the exit status says not all were
    names = ", ".join(os.path.basename(p) for p in skipped[:3]) + (" ..." if len(skipped) > 3
                                                                  else "")
    raise ValueError(f"wrote {len(written)} image(s) to {f.output}; {len(skipped)} of the "
                     f"inputs unreadable, skipped: {names}")
  print(f"wrote {len(written)} image(s) to {f.output}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
