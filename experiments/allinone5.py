"""All-in-one restoration, 5 tasks: the setting of IDR (Zhang et al. 2023): deraining
(Rain100L), dehazing (SOTS outdoor), colour denoising at sigma 25 (BSD68), deblurring (GoPro)
and low-light enhancement (LOL), one model.

  python launch/train.py --config=experiments/allinone5.py --workdir=/tmp/mtl/allinone5
  python launch/train.py --config=experiments/allinone5.py:/data --workdir=/ckpt/allinone5

Without an argument: the tiny IPT on the embedded photographs, every degradation synthesized
(rain, haze, Gaussian noise, Gaussian / motion blur, darkening with Poisson-Gaussian noise),
minutes on 2 CPU cores. With a data root, allinone3's layout (see experiments/allinone3.py) plus
  <root>/train/deblur/         GoPro train (GOPR*/blur + GOPR*/sharp per sequence)
  <root>/train/lowlight/       LOL our485 (low/ + high/)
  <root>/test/deblur/GoPro/    GoPro test, 1111 pairs
  <root>/test/lowlight/LOL/    LOL eval15, 15 pairs
The papers score RGB PSNR / SSIM: results.json holds them (psnr_rgb, ssim_rgb) beside the
Y-channel ones, and the table the trainer prints is Y-channel. The same protocol differences as
allinone3 apply (mtl is task-aware, equal task shares per step; its SSIM is BasicSR's, not the
papers' scikit-image window).
"""
import os

from experiments import allinone3

from mtl import run_defaults

TASKS = ("derain", "dehaze", "denoise_25", "deblur", "lowlight")


def get_config(arg=None):
  root = run_defaults.parse_arg(arg, "experiments/allinone5.py", "root", root="")["root"]
  if not root:
    return allinone3.photos(run_defaults.get_config("tiny"), TASKS)
  config = allinone3.get_config(root)
  del config["published"]   # allinone3's 3-task figures do not apply
  config.tasks = TASKS
  train, test = os.path.join(root, "train"), os.path.join(root, "test")
  config.data.pairs = ",".join(f"{t}={os.path.join(train, t)}"
                               for t in ("derain", "dehaze", "deblur", "lowlight"))
  config.eval.sets = ",".join([
      f"CBSD68=for:denoise:{os.path.join(test, 'denoise', 'CBSD68')}",
      f"Rain100L=for:derain:paired:{os.path.join(test, 'derain', 'Rain100L')}",
      f"SOTS=for:dehaze:paired:{os.path.join(test, 'dehaze', 'SOTS', 'outdoor')}",
      f"GoPro=for:deblur:paired:{os.path.join(test, 'deblur', 'GoPro')}",
      f"LOL=for:lowlight:paired:{os.path.join(test, 'lowlight', 'LOL')}"])
  return config
