"""Test sets: clean HR folders (Set5, Set14, B100, Urban100, CBSD68), rainy / clean pairs
(Rain100L) and the embedded photographs' test split. Everything is uint8 HWC RGB, sorted by name.

Degrading the clean HR images (deterministically, per task and image) happens in `mtl.evaluate`.

Rainy / clean layouts that `load_paired_folder` recognises, in this order:
  1. two subfolders: rainy one of rain, rainy, input, degraded, lq, data; clean one of
     norain, clean, gt, target, groundtruth, hq, label, background
     (a rainy subfolder holding a single subfolder, as JORDER's rain/X2/, is descended into);
  2. a rainy subfolder and the clean images beside it (PReNet: rainy/rain-001.png, norain-001.png);
  3. one folder of rain-001.png and norain-001.png files.
Files pair by their name with those words, separators and a JORDER 'x2' suffix removed
(rain/X2/norain-001x2.png pairs with norain/norain-001.png).
"""
import os
import re

from mtl.data import folder as folder_lib
from mtl.data import sources

RAINY_DIRS = ("rain", "rainy", "input", "degraded", "lq", "data")
CLEAN_DIRS = ("norain", "clean", "gt", "target", "groundtruth", "hq", "label", "background")
_TAG = r"(?:no_?rain|rainy?|clean|gt|target|input|groundtruth|degraded|lq|hq|label|background)"


def mod_crop(image, scale):
  """`image` cropped at the bottom and right to sides divisible by `scale` (as SR test sets are)."""
  h, w = image.shape[:2]
  return image[:h - h % scale, :w - w % scale]


def _subfolders(path):
  return sorted(n for n in os.listdir(path)
                if not n.startswith(".") and os.path.isdir(os.path.join(path, n)))


def _stem(path):
  return os.path.splitext(os.path.basename(path))[0]


def load_hr_folder(path):
  """[(name, uint8 HWC RGB)] of the images directly in `path`, sorted by name.

  Not recursive: a Set5 download often holds LR copies in subfolders. In a folder of
  `*_HR.png` / `*_LR.png` files (Huang's SelfExSR layout) only the `_HR` ones are read.
  """
  paths = folder_lib.list_images(path, recursive=False)
  hr_only = [p for p in paths if _stem(p).upper().endswith("_HR")]
  paths = hr_only or paths
  if not paths:
    subfolders = _subfolders(path)
    hint = f"; its subfolders: {', '.join(subfolders)}" if subfolders else ""
    raise ValueError(f"no images directly in test folder {path}{hint}")
  return [(_stem(p), folder_lib.read_rgb(p)) for p in paths]


def pair_key(stem):
  """What a rainy and a clean file name share: 'norain-001x2', 'rain-001' -> 1; '12_gt' -> 12."""
  stem = re.sub(r"x\d$", "", stem.lower())
  stem = re.sub(rf"^{_TAG}[-_ ]?", "", stem)
  stem = re.sub(rf"[-_ ]?{_TAG}$", "", stem)
  return int(stem) if stem.isdigit() else stem


def _find_dir(path, names):
  for name in _subfolders(path):
    if name.lower() in names:
      return os.path.join(path, name)
  return None


def _images_in(path):
  """Images directly in `path`, or in its only subfolder when it has none (JORDER rain/X2/)."""
  images = folder_lib.list_images(path, recursive=False)
  subfolders = _subfolders(path)
  if not images and len(subfolders) == 1:
    return folder_lib.list_images(os.path.join(path, subfolders[0]), recursive=False)
  return images


def _find_pairs(path):
  """(rainy paths, clean paths) under `path`, from one of the recognised layouts."""
  rainy_dir, clean_dir = _find_dir(path, RAINY_DIRS), _find_dir(path, CLEAN_DIRS)
  if rainy_dir and clean_dir:
    return _images_in(rainy_dir), _images_in(clean_dir)
  here = folder_lib.list_images(path, recursive=False)
  rainy = [p for p in here if re.match(r"rainy?[-_ ]?\d", _stem(p).lower())]
  clean = [p for p in here if re.match(r"no_?rain[-_ ]?\d", _stem(p).lower())]
  if rainy_dir and here:
    return _images_in(rainy_dir), clean or here
  if rainy and clean:   # (RainTrainL's rainstreak-*/rainregion-* files are neither)
    return rainy, clean
  raise ValueError(
      f"no rainy/clean pairs found in {path}; expected subfolders "
      f"({'|'.join(RAINY_DIRS)}) + ({'|'.join(CLEAN_DIRS)}), or rain-*.png + norain-*.png files")


def load_paired_folder(path):
  """[(name, degraded uint8 HWC, clean uint8 HWC)] from a Rain100L-style folder, sorted by name."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"paired test folder {path} does not exist (or is not a folder)")
  rainy, clean = _find_pairs(path)
  rainy_by_key = {pair_key(_stem(p)): p for p in rainy}
  clean_by_key = {pair_key(_stem(p)): p for p in clean}
  unmatched = sorted(map(str, set(rainy_by_key) ^ set(clean_by_key)))
  if unmatched or not rainy_by_key:
    raise ValueError(f"rainy and clean images in {path} do not pair up one to one ({len(rainy)} "
                     f"rainy, {len(clean)} clean; unmatched: {', '.join(unmatched[:5])})")
  items = []
  for key in sorted(rainy_by_key, key=lambda k: (isinstance(k, str), k)):
    degraded = folder_lib.read_rgb(rainy_by_key[key])
    target = folder_lib.read_rgb(clean_by_key[key])
    if degraded.shape != target.shape:
      raise ValueError(f"{rainy_by_key[key]} is {degraded.shape[:2]} but its clean image "
                       f"{clean_by_key[key]} is {target.shape[:2]}")
    items.append((_stem(clean_by_key[key]), degraded, target))
  return items


def photos_testset(data_cfg=None, split="test"):
  """[(name, uint8 HWC RGB)] of a split of the embedded photographs ('test' or 'validation'),
  sorted by name; built in the TFDS data dir (`sources.tfds_dir(data_cfg)`) on first use."""
  records = sources.photos_builder(sources.tfds_dir(data_cfg)).as_data_source(split)
  items = [(record["name"].decode(), record["image"]) for record in records]
  return sorted(items, key=lambda item: item[0])
