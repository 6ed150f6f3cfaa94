"""Run a study: every run of experiments/studies/<name>.py, one after the other, resumable.

  python launch/study.py --config=experiments/studies/mini.py --workdir=/tmp/mtl/mini
  python launch/study.py --config=... --workdir=... --dry_run          # the runs and commands
  python launch/study.py --config=... --workdir=... --only='joint-*'   # a subset (a cluster job)

Re-running the same command skips the runs that are DONE and resumes an interrupted one from
its checkpoint; a different study config for the same --workdir is refused. Tables and report:
  python launch/report.py --workdir=/tmp/mtl/mini
Exit status: 0 all selected runs done; 1 bad input or a failed run; 3 some fine-tunes wait for
pre-training runs not done yet (--only); 128 + signal when interrupted.
"""
import os
import sys

import _root  # noqa: F401  (repository root on sys.path for `experiments`)
from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Study config (experiments/studies/*.py[:arg]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the study (study.json, runs/, tables/).")
flags.DEFINE_bool("dry_run", False, "Print the runs and their exact commands; write nothing.")
flags.DEFINE_string("only", "", "Comma-separated globs of run names to run, e.g. 'joint-*'.")
flags.DEFINE_string("jax_cache", "", "JAX compilation cache the runs share: '' -> "
                    "$JAX_COMPILATION_CACHE_DIR or ~/.cache/mtl/jax_cache; 'off' -> none.")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from mtl import study as study_lib
  try:
    study = study_lib.Study(FLAGS.config, FLAGS.workdir)
    if FLAGS.dry_run:
      sys.exit(study_lib.dry_run(study, FLAGS.only))
    sys.exit(study_lib.Runner(study, jax_cache=FLAGS.jax_cache).run(FLAGS.only))
  except (ValueError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  except BrokenPipeError:  # e.g. --dry_run | head: the reader has all it wanted
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)


if __name__ == "__main__":
  app.run(main)
