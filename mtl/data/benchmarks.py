"""Test sets and paired data: clean HR folders (Set5, Set14, B100, Urban100, CBSD68), degraded /
clean pairs (Rain100L, SOTS, GoPro, LOL) and the embedded photographs' test split. Everything is
uint8 HWC RGB, sorted by name.

Degrading the clean HR images (deterministically, per task and image) happens in `mtl.evaluate`.

Degraded / clean layouts that `find_pairs` recognises, in this order:
  1. two subfolders: a degraded one named (any case) rain, rainy, input, degraded, lq, data, hazy,
     haze, blur, blurred, low or synthetic, and a clean one named norain, clean, gt, target,
     groundtruth, hq, label, background, clear, sharp, high, normal or original (a subfolder
     without images directly in it is searched recursively: JORDER's rain/X2/, OTS's part1-4).
     Rain100L (rain/norain), SOTS and RESIDE OTS (hazy + gt or clear; AirNet / PromptIR's
     synthetic + original), LOL (low/high; LOL-v2 Low/Normal), one GoPro sequence;
  2. a degraded subfolder and the clean images beside it (PReNet: rainy/rain-001.png, norain-001.png);
  3. one folder of rain-001.png and norain-001.png files;
  4. subfolders that each hold layout 1 (GoPro: <split>/GOPR0384_11_00/{blur,sharp}/000001.png);
     their images are named '<subfolder>/<name>'.
Files pair by their name with the layout's words (whole, or beside digits) and separators
removed, the same name first; a degraded name without a partner then loses a JORDER 'x2' suffix
(rain/X2/norain-001x2.png pairs with norain/norain-001.png), and then RESIDE's haze parameters:
hazy 0001_0.8_0.2.jpg (outdoor: id, airlight, beta) and 1400_3.png (indoor) pair with clear
0001.png and 1400.png. Only so may several degraded images share one clean image (RESIDE's
training sets); two clean images, or two degraded ones otherwise, that pair by the same name are
refused, naming both; every degraded image needs its clean one. A clean image larger than its
degraded one by an even margin on each side is centre-cropped to it (SOTS indoor: 640 x 480
clean, 620 x 460 hazy).
"""
import collections
import os
import re
import types

from absl import logging

from mtl.data import folder as folder_lib
from mtl.data import sources

DEGRADED_DIRS = ("rain", "rainy", "input", "degraded", "lq", "data", "hazy", "haze", "blur",
                 "blurred", "low", "synthetic")
CLEAN_DIRS = ("norain", "clean", "gt", "target", "groundtruth", "hq", "label", "background",
              "clear", "sharp", "high", "normal", "original")
_TAG = (r"(?:no_?rain|rainy?|clean|gt|target|input|groundtruth|degraded|lq|hq|label|background"
        r"|hazy|haze|clear|blur|blurred|sharp|low|high|normal)")


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
  """[(name, uint8 HWC RGB)] of `hr_paths(path)`, sorted by name."""
  return [(_stem(p), folder_lib.read_rgb(p)) for p in hr_paths(path)]


def hr_paths(path):
  """The clean images of a test folder: those directly in `path`; ValueError where there is none.

  Not recursive: a Set5 download often holds LR copies in subfolders. In a folder of
  `*_HR.png` / `*_LR.png` files (Huang's SelfExSR layout) only the `_HR` ones are read; a folder
  with no images but an `HR` subfolder (the official IPT / EDSR benchmark layout) reads that.
  """
  paths = folder_lib.list_images(path, recursive=False)
  hr_only = [p for p in paths if _stem(p).upper().endswith("_HR")]
  paths = hr_only or paths
  if not paths and os.path.isdir(os.path.join(path, "HR")):  # EDSR / IPT's <Set>/HR, LR_bicubic/
    return hr_paths(os.path.join(path, "HR"))
  if not paths:
    subfolders = _subfolders(path)
    hint = f"; its subfolders: {', '.join(subfolders)}" if subfolders else ""
    raise ValueError(f"no images directly in test folder {path}{hint}")
  return paths


def pair_keys(stem):
  """What a degraded and a clean file name may share, strictest first: the name without the
  layout's words (whole, or beside digits) and separators ('rain-001', '12_gt' -> 1, 12;
  'blurred_7' -> 7; 'yellow' stays); then without a JORDER / SR suffix 'x2' too ('norain-001x2',
  'babyx2' -> 1, 'baby'). Digits become an int."""
  stem = re.sub(rf"^{_TAG}(?:[-_ ]|(?=\d)|$)", "", stem.lower())
  stem = re.sub(rf"(?:^|[-_ ]|(?<=\d)){_TAG}$", "", stem)
  return list(dict.fromkeys(int(k) if k.isdigit() else k
                            for k in (stem, re.sub(r"x\d$", "", stem))))


def reside_key(stem):
  """The clear image's id in a RESIDE hazy name: '0001_0.8_0.2' (outdoor: id, airlight, beta),
  '1400_3' (indoor) -> 1, 1400; None for another name."""
  match = re.fullmatch(r"(\d+)(?:_\d+(?:\.\d+)?)+", stem)
  return int(match.group(1)) if match else None


def _find_dir(path, names):
  """The subfolder of `path` whose lower-cased name comes first in `names`, or None."""
  by_name = {n.lower(): n for n in _subfolders(path)}
  for name in names:
    if name in by_name:
      return os.path.join(path, by_name[name])
  return None


def _images_in(path):
  """Images directly in `path`, or, when it has none, in its subfolders, recursively (JORDER's
  rain/X2/, RESIDE OTS's hazy/part1 ... part4)."""
  images = folder_lib.list_images(path, recursive=False)
  return images or folder_lib.list_images(path, recursive=True)


def _layout(path):
  """(degraded paths, clean paths) of layouts 1-3 directly in `path`, or None."""
  degraded_dir, clean_dir = _find_dir(path, DEGRADED_DIRS), _find_dir(path, CLEAN_DIRS)
  if degraded_dir and clean_dir:
    return _images_in(degraded_dir), _images_in(clean_dir)
  here = folder_lib.list_images(path, recursive=False)
  rainy = [p for p in here if re.match(r"rainy?[-_ ]?\d", _stem(p).lower())]
  clean = [p for p in here if re.match(r"no_?rain[-_ ]?\d", _stem(p).lower())]
  if degraded_dir and here:
    return _images_in(degraded_dir), clean or here
  if rainy and clean:   # (RainTrainL's rainstreak-*/rainregion-* files are neither)
    return rainy, clean
  return None


def _match(path, degraded, clean, prefix=""):
  """[(name, degraded path, clean path)] of one layout's files, paired by `pair_keys`."""
  for listed in (degraded, clean):  # rain-001.png and rain-001.jpg: one name, two images
    stems = [_stem(p) for p in listed]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
      raise ValueError(f"{path} holds {twice[0]!r} in {stems.count(twice[0])} files (other "
                       "extensions or folders); keep one of them")
  clean_by_key = {}
  for p in clean:
    key = pair_keys(_stem(p))[0]
    if clean_by_key.setdefault(key, p) != p:
      raise ValueError(f"{clean_by_key[key]} and {p} in {path} pair by the same name "
                       f"({key!r}); rename one of them")
  keys, taken = [], {}
  for p in degraded:
    candidates = pair_keys(_stem(p))
    key = next((k for k in candidates if k in clean_by_key), None)
    if key is None:   # RESIDE: several hazy images (airlight, beta) share a clear one
      key = reside_key(_stem(p))
      key = key if key in clean_by_key else candidates[-1]
    elif key in taken:
      raise ValueError(f"{taken[key]} and {p} in {path} both pair with {clean_by_key[key]}; "
                       "keep one of them")
    else:
      taken[key] = p
    keys.append(key)
  used = [k for k in keys if k in clean_by_key]
  many = len(set(used)) < len(used)    # several degraded per clean image (RESIDE training sets)
  unmatched = sorted(map(str, set(keys) - set(clean_by_key)))
  if not many:
    unmatched = sorted(map(str, set(keys) ^ set(clean_by_key)))
  if unmatched or not keys:
    raise ValueError(f"degraded and clean images in {path} do not pair up ({len(degraded)} "
                     f"degraded, {len(clean)} clean; unmatched: {', '.join(unmatched[:5])})")
  triples = [(prefix + _stem(d if many else clean_by_key[k]), d, clean_by_key[k])
             for k, d in zip(keys, degraded)]
  by = lambda name: pair_keys(name)[-1] if reside_key(name) is None else reside_key(name)
  order = lambda t: by(os.path.basename(t[0]))
  return sorted(triples, key=lambda t: (isinstance(order(t), str), order(t), t[0]))


def read_roots(path, paired):
  """[(folder, recursive)] a test set (`paired` or clean HR) or a data.pairs folder at `path`
  reads images from: find_pairs' layouts (a layout's degraded and clean folders may be read
  recursively, a GoPro root by its sequences), or load_hr_folder's folder and HR/ fallback."""
  if not paired:
    return [(path, False), (os.path.join(path, "HR"), False)]
  def layout(folder):
    dirs = [d for d in (_find_dir(folder, DEGRADED_DIRS), _find_dir(folder, CLEAN_DIRS)) if d]
    return [(folder, False)] + [(d, True) for d in dirs] if _layout(folder) else []
  return layout(path) or [(path, False)] + [
      root for n in _subfolders(path) for root in layout(os.path.join(path, n))]


def find_pairs(path):
  """[(name, degraded path, clean path)] of a paired folder in a recognised layout, sorted."""
  path = os.path.expanduser(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"paired folder {path} does not exist (or is not a folder)")
  found = _layout(path)
  if found:
    return _match(path, *found)
  sequences = [(n, _layout(os.path.join(path, n))) for n in _subfolders(path)]
  sequences = [(n, found) for n, found in sequences if found]
  if sequences:   # GoPro: one layout per sequence
    return sorted(t for n, found in sequences
                  for t in _match(os.path.join(path, n), *found, prefix=n + "/"))
  raise ValueError(
      f"no degraded/clean pairs found in {path}; expected subfolders "
      f"({'|'.join(DEGRADED_DIRS)}) + ({'|'.join(CLEAN_DIRS)}), rain-*.png + norain-*.png "
      "files, or subfolders that each hold such a pair of subfolders (GoPro)")


def clean_margins(degraded_path, degraded_hw, clean_path, clean_hw):
  """(top, left) of a degraded image's (height, width) window in its clean image's: (0, 0) for
  equal sizes, half an even margin a side for a larger clean image (SOTS indoor); ValueError
  naming the pair and both sizes for any other mismatch."""
  dh, dw = clean_hw[0] - degraded_hw[0], clean_hw[1] - degraded_hw[1]
  if dh < 0 or dw < 0 or dh % 2 or dw % 2:
    raise ValueError(f"{degraded_path} is {degraded_hw[0]} x {degraded_hw[1]} (height x width) "
                     f"but its clean image {clean_path} is {clean_hw[0]} x {clean_hw[1]}; a "
                     "clean image must be the same size or larger by an even margin a side")
  return dh // 2, dw // 2


def check_pair_sizes(path):
  """ValueError for a paired folder whose images cannot all be used, from their headers and a
  PNG's or JPEG's last bytes only (reading the pixels would cost as much as training on them):
  one line naming every file that cannot be read or is cut short (folder.read_every's), else
  clean_margins' for the first pair whose sizes do not fit."""
  pairs = find_pairs(path)
  files = sorted({p for _, degraded, clean in pairs for p in (degraded, clean)})  # RESIDE's
  sizes = dict(zip(files, folder_lib.read_every(folder_lib.checked_size, files, path,  # shared
                                                "nothing is trained")))
  for _, degraded, clean in pairs:
    clean_margins(degraded, sizes[degraded], clean, sizes[clean])


def read_pair(degraded_path, clean_path):
  """(degraded, clean) uint8 HWC of one pair, the clean one centre-cropped to the degraded one's
  size where it is larger by an even margin on each side; ValueError on any other mismatch."""
  degraded, clean = folder_lib.read_rgb(degraded_path), folder_lib.read_rgb(clean_path)
  top, left = clean_margins(degraded_path, degraded.shape[:2], clean_path, clean.shape[:2])
  if degraded.shape != clean.shape:
    logging.log_first_n(logging.INFO, "centre-cropping clean %s from %s to %s (SOTS indoor "
                        "layout)", 1, clean_path, clean.shape[:2], degraded.shape[:2])
    clean = clean[top:top + degraded.shape[0], left:left + degraded.shape[1]]
  return degraded, clean


def load_paired_folder(path):
  """[(name, degraded uint8 HWC, clean uint8 HWC)] of a paired folder (see the module docstring)."""
  return [(name,) + read_pair(d, c) for name, d, c in find_pairs(path)]


def check_held_out(data_cfg):
  """Refuse (one line) a data config that holds no images out of a folder."""
  fraction = data_cfg.get("validation_fraction", 0.0)
  if data_cfg.get("source") != "folder" or not fraction:
    raise ValueError(f"no images are held out of data.folder (data.source="
                     f"{data_cfg.get('source')!r}, data.validation_fraction={fraction}); give "
                     "data.source='folder' and a data.validation_fraction > 0")


def folder_validation_set(data_cfg, limit=0):
  """[(name, uint8 HWC RGB)] of the whole images `data.validation_fraction` holds out of
  `data.folder` (the folder source's 'validation' split, `folder.split_paths`), sorted by name,
  the first `limit` (0: all) decoded; a name is the image's relative path without its extension
  (with it where two would share one)."""
  check_held_out(data_cfg)
  root = folder_lib.absolute(data_cfg.folder)
  config = types.SimpleNamespace(folder=root, validation_fraction=data_cfg.validation_fraction)
  held_out = folder_lib.split_paths(config, folder_lib.list_images(root))["validation"]
  stems = collections.Counter(os.path.splitext(name)[0] for name, _ in held_out)
  named = lambda name: name if stems[os.path.splitext(name)[0]] > 1 else os.path.splitext(name)[0]
  return [(named(name), folder_lib.read_rgb(path))
          for name, path in held_out[:limit or len(held_out)]]


def photos_testset(data_cfg=None, split="test"):
  """[(name, uint8 HWC RGB)] of a split of the embedded photographs ('test' or 'validation'),
  sorted by name; built in the TFDS data dir (`sources.tfds_dir(data_cfg)`) on first use."""
  records = sources.photos_builder(sources.tfds_dir(data_cfg)).as_data_source(split)
  items = [(record["name"].decode(), record["image"]) for record in records]
  return sorted(items, key=lambda item: item[0])
