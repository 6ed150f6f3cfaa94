"""Score restored images against references: per-image and mean PSNR / SSIM (BasicSR conventions).

  python launch/score.py --restored=out/ --reference=Set5/HR [--crop_border=2] [--y_channel|--rgb] \
      [--mod_crop=2] [--grey_plane] [--csv=scores.csv]

Images pair by file name (stem; else as benchmarks pair them: babyx2 ~ baby, rain-001 ~ norain-001),
each reference with one restored image; references left without one are named in a warning.
Y channel (MATLAB BT.601 luma, as IPT reports) by default, a grey reference's too (its three equal
channels, as BasicSR reads them); --rgb scores all three channels. --grey_plane scores each grey
reference (a grey file, or R == G == B) and its image on the grey plane (a colour output's: its
rounded luma), as mtl's evaluation scores grey denoising (DnCNN's protocol; Y reads 1.32 dB
higher). Two images of one name (baby.png, baby.bmp) in either folder are refused. The mean PSNR
counts an identical pair (PSNR inf) as 100 dB and says how many there were. SR papers crop `scale`
border pixels (--crop_border) and crop the reference to a multiple of the scale (--mod_crop). A
missing partner, a size mismatch or an unreadable image: one line on stderr, exit status 1.
"""
import os

import _root  # noqa: F401  (repository root on sys.path for `mtl`)
import cli
from absl import app, flags

flags.DEFINE_string("restored", None, "Folder of restored images.")
flags.DEFINE_string("reference", None, "Folder of reference (clean) images.")
flags.DEFINE_integer("crop_border", 0, "Pixels dropped from every edge before scoring.",
                     lower_bound=0)
flags.DEFINE_integer("mod_crop", 0, "Crop references to a multiple of this (the SR scale); 0: no.",
                     lower_bound=0)
flags.DEFINE_bool("y_channel", True, "Score the Y channel (--rgb or --noy_channel: RGB).")
flags.DEFINE_bool("rgb", False, "Score RGB (same as --noy_channel).")
flags.DEFINE_bool("grey_plane", False, "Score grey references on the grey plane (grey denoising: "
                  "DnCNN's protocol, as evaluation scores denoise_gray_* tasks).")
flags.DEFINE_string("csv", "", "Also write the per-image scores to this CSV file (a new file "
                    "unless --overwrite).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --csv file (refused otherwise).")
cli.required_paths("restored", "reference")


@cli.absl_main
def main():
  from mtl import restoration
  f = flags.FLAGS
  if f.rgb and f.y_channel and f["y_channel"].present:
    raise ValueError("--rgb and --y_channel contradict each other; pass one (RGB or Y)")
  y_channel = f.y_channel and not f.rgb
  for flag, folder in (("--restored", f.restored), ("--reference", f.reference)):
    if not cli.is_url(folder) and not os.path.isdir(folder):  # a bucket's: read by epath
      raise ValueError(f"{flag}={folder} is " + ("a file; give the folder that holds it"
                                                  if os.path.isfile(folder) else "not a folder"))
  if f.csv:  # refused before the scoring: nothing is computed for a result that can't be kept
    restoration.check_new_file(f.csv, "--csv", f.overwrite,
                               {"--restored": f.restored, "--reference": f.reference})
  rows, mean = restoration.score_folders(f.restored, f.reference, f.crop_border, y_channel,
                                     f.mod_crop, grey_plane=f.grey_plane)
  if f.csv:
    restoration.write_csv(f.csv, rows)
  print(restoration.format_scores(rows, mean), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
