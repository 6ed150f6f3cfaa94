"""Data: where clean images come from, the training input pipeline and the test sets.

  photos      TFDS builder `mtl_photos`: scikit-image's colour photographs (embedded default)
  folder      TFDS builder `mtl_folder`: a user's folder of clean images; image reading rules
  sources     open_images(config.data, split): random access to a prepared dataset's images
  pipeline    batch_for_step / train_batches: deterministic per-task crops, built ahead in threads
  benchmarks  test sets: clean HR folders, rainy / clean pairs, the photos' test split
"""
