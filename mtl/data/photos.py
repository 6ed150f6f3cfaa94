"""TFDS builder `mtl_photos`: the real colour photographs shipped inside scikit-image's wheel.

The embedded default image set: no download, no network, identical on every machine. Only the
real colour photographs are used (the grey photographs, drawings and synthetic charts are not):

  train       astronaut, hubble_deep_field, ihc, retina                   (4 images)
  validation  motorcycle_left, motorcycle_right                           (2 images)
  test        chelsea, coffee, rocket                                     (3 images)

Features: `image` (uint8 HWC RGB, zlib-compressed tensor: TFDS cannot encode `Image` features
without TensorFlow) and `name` (the photograph's name; bytes when read back).
Training is mostly not natural scenes (a portrait, a telescope field, microscopy, a retina: 18% of
its pixel values are <= 10, against 4.5% on the test images), so the test PSNRs measure transfer
to natural photographs. The validation images are for choosing hyper-parameters (studies pick the
lr on them). The two
motorcycle photographs are the left and right views of one stereo pair (Middlebury 2014, via
scikit-image): nearly the same picture, so they stay together in validation; no split holds an
image whose twin is in another (STEREO_TWINS; checked in tests/test_data_sources.py).
Built into <tfds_dir>/mtl_photos/1.3.0/ (see `sources.prepare`; a new version rebuilds).
"""
import os

import numpy as np
import skimage.data
import tensorflow_datasets as tfds

from mtl.data import folder

# name -> file inside skimage/data (shipped with the wheel, never fetched by pooch).
PHOTO_FILES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "retina": "retina.jpg",
    "rocket": "rocket.jpg",
}
TEST_PHOTOS = ("chelsea", "coffee", "rocket")
VALIDATION_PHOTOS = ("motorcycle_left", "motorcycle_right")
STEREO_TWINS = (("motorcycle_left", "motorcycle_right"),)  # two views of one scene
TRAIN_PHOTOS = tuple(sorted(set(PHOTO_FILES) - set(TEST_PHOTOS) - set(VALIDATION_PHOTOS)))


def photo_path(name):
  """Path of a photograph inside the installed scikit-image; FileNotFoundError if it's absent."""
  path = os.path.join(os.path.dirname(skimage.data.__file__), PHOTO_FILES[name])
  if not os.path.isfile(path):
    raise FileNotFoundError(f"scikit-image photograph {path} is missing; reinstall scikit-image")
  return path


class MtlPhotos(tfds.core.GeneratorBasedBuilder):
  """scikit-image's colour photographs, split into fixed train, validation and test lists."""

  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.2.0": "motorcycle_right moves to a validation split.",
                   "1.3.0": "motorcycle_left joins its stereo twin in validation."}
  # TFDS looks for a download-checksums file beside the builder's code via `importlib_resources`,
  # which a TensorFlow-free install may lack; nothing is downloaded here, so there is no file.
  code_path = None

  def _info(self):
    return folder.LocalInfo(
        builder=self,
        description=("Real colour photographs shipped inside the scikit-image wheel "
                     f"({', '.join(sorted(PHOTO_FILES))}); test: {', '.join(TEST_PHOTOS)}."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "name": tfds.features.Text(),
        }),
        homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is on disk already
    return {"train": self._generate_examples(TRAIN_PHOTOS),
            "validation": self._generate_examples(VALIDATION_PHOTOS),
            "test": self._generate_examples(TEST_PHOTOS)}

  def _generate_examples(self, names):
    for name in names:
      yield name, {"image": folder.read_rgb(photo_path(name)), "name": name}
