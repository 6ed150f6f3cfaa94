"""One step's batch for step tests: real photo crops (scikit-image's astronaut), one sub-batch
per task at that task's HR side, the crops drawn by `seed`."""
import numpy as np
import skimage.data


def photo_batch(config, run, seed=0):
  photo = skimage.data.astronaut()
  rng = np.random.default_rng(seed)
  batch = {}
  for spec in run.model.specs:
    side = spec.hr_crop(config.model.patch_size)
    ys, xs = rng.integers(0, photo.shape[0] - side, (2, config.data.batch_size))
    batch[spec.name] = np.stack([photo[y:y + side, x:x + side] for y, x in zip(ys, xs)])
  return batch
