"""Train and evaluate one run.

  python launch/train.py --config=experiments/tiny.py --workdir=/tmp/mtl/tiny \
      [--config.total_steps=2000] [--config.tasks=sr_x2,derain]

Re-running the same command resumes from the workdir's latest checkpoint.
"""
import sys

import _root  # noqa: F401  (repository root on sys.path for `experiments`)
from absl import app, flags, logging
from ml_collections import config_flags

from mtl import distributed

config_flags.DEFINE_config_file("config", None, "Config file (experiments/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the run (checkpoints, events, results).")
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:  # orbax and jax are chatty at INFO
    logging.set_verbosity(logging.WARNING)
  from mtl import train
  distributed.initialize()
  try:
    train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except (ValueError, FileNotFoundError, train.NonFiniteLoss) as error:
    logging.error("%s", error)
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
