"""Train and evaluate one run.

  python launch/train.py --config=experiments/tiny.py --workdir=/tmp/mtl/tiny \
      [--config.total_steps=2000] [--config.tasks=sr_x2,derain] [--dry_run]

Config files take `:key=value,...` (`experiments/tiny.py:tasks=sr_x2+derain`); list fields
take `a,b` as overrides (`--config.tasks=sr_x2,derain`, `--config.degrade.rain.length=8,24`).
Re-running the same command resumes from the workdir's latest checkpoint; re-running a
finished run says so and exits 0. --dry_run prints the resolved config, parameters per group,
the mesh and the workdir's files, and exits without writing anything; --help_config lists every
config field with its value and what it means (mtl/run_defaults.py documents them);
--check_config checks the config and overrides as the run would, without devices, in one line.

Output goes to the terminal and is appended to <workdir>/train.log. Exit status: 0 finished
(or already finished), 1 bad input, a refused workdir or a failed run (one `error:` line),
75 stopped by SIGTERM or Ctrl-C after saving a checkpoint (run the same command to resume),
130 a second Ctrl-C (stopped at once; the last checkpoint is kept).
"""
import os
import sys
import traceback

import _root  # noqa: F401  (repository root on sys.path for `experiments`)
import cli
from absl import app, flags, logging
from ml_collections import config_flags

from mtl import distributed

config_flags.DEFINE_config_file("config", None, "Config file (experiments/*.py[:key=value,...]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory of the run (checkpoints, events, results).")
flags.DEFINE_bool("dry_run", False, "Print the resolved config, parameter counts, mesh and the "
                  "workdir's files, then exit without writing anything.")
flags.DEFINE_bool("help_config", False, "Print every config field with its value in --config "
                  "(and the overrides) and what it means, then exit.")
flags.DEFINE_bool("check_config", False, "Check the config and its overrides as the run would "
                  "(fields, values, data and test folders), print one line and exit: no devices, "
                  "no writes (slurm.py runs it before it submits).")
flags.DEFINE_string("compile_cache", "", "Persistent XLA compilation cache: a resume, rerun or "
                    "study run with the same steps loads them instead of compiling. '' -> "
                    "$JAX_COMPILATION_CACHE_DIR or ~/.cache/mtl/jax_cache; 'off' -> none.")
flags.mark_flags_as_required(["config"])  # and --workdir, except for --help_config
distributed.define_flags()

INTERRUPTED_EXIT = 130


def describe_fields(config):
  """Every field of `config`: `name = value  meaning` (mtl/run_defaults.py's FIELD_HELP)."""
  from mtl import files, run_defaults as base
  fields = files.flatten(config.to_dict())
  width = max(len(f"{k} = {v!r}") for k, v in fields.items())
  def meaning(key):  # a field the config added (an aggregator's argument): its group's line
    while key and key not in base.FIELD_HELP:
      key = key.rpartition(".")[0]
    return base.FIELD_HELP.get(key, "")
  return "\n".join(f"{f'{k} = {v!r}':<{min(width, 48)}}  {meaning(k)}".rstrip()
                   for k, v in sorted(fields.items()))


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:  # orbax and jax are chatty at INFO
    logging.set_verbosity(logging.WARNING)
  from mtl import run_config, xla_options
  if "regimes" in flags.FLAGS.config and "regime" not in flags.FLAGS.config:
    cli.fail(f"--config={cli.config_arg(sys.argv)} is a study's config (it has regimes); run "
             "it with launch/study.py, or give a run's config (e.g. experiments/tiny.py)")
  try:  # before any backend opens: XLA sizes its CPU thread pool once
    xla_options.set_cpu_threads(flags.FLAGS.config.get("cpu_threads", 0))
  except ValueError as error:
    cli.fail(error)
  import jax
  from mtl import compile_cache, progress, run_folder, train
  from mtl import run_state
  distributed.initialize()
  try:
    config = run_config.normalize(flags.FLAGS.config)
    if flags.FLAGS.help_config:
      print(describe_fields(config))
      return
    if not flags.FLAGS.workdir:
      cli.fail("flag --workdir must have a value (the run's directory)")
    if cli.is_url(flags.FLAGS.workdir):  # os.path would read gs://b/run as the folder gs:/b/run
      cli.fail(f"--workdir={flags.FLAGS.workdir} is a URL; the run folder is written with file "
               "I/O: mount the bucket (gcsfuse) and give that path")
    from mtl.study.workdir import STUDY_FILE
    if os.path.exists(os.path.join(flags.FLAGS.workdir, STUDY_FILE)):  # its runs go in runs/
      cli.fail(f"--workdir={flags.FLAGS.workdir} is a study's folder (it holds {STUDY_FILE}); "
               "give a run a folder of its own")
    if flags.FLAGS.check_config:
      specs, _ = run_config.validate(config)
      print(f"config ok: {config.regime} {','.join(s.name for s in specs)}, "
            f"{config.total_steps} steps", flush=True)
      return
    if flags.FLAGS.dry_run:
      print(run_state.prepare(config, flags.FLAGS.workdir).describe())
      return
    cache = compile_cache.directory_from(flags.FLAGS.compile_cache)
    if cache:
      compile_cache.enable(cache)
    counter = compile_cache.Counter()
    with progress.Tee():
      try:
        try:
          train.train_and_evaluate(config, flags.FLAGS.workdir)
        finally:  # also for a stopped run: its compute.json holds what its attempts compiled
          if jax.process_index() == 0:
            counter.add_to(os.path.join(flags.FLAGS.workdir, run_folder.COMPUTE_FILE))
      except train.Preempted as stop:
        print(stop, flush=True)
        sys.exit(run_folder.PREEMPTED_EXIT)
      except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); the last saved checkpoint is kept; run the same "
              "command to resume", file=sys.stderr, flush=True)
        cli.exit_now(INTERRUPTED_EXIT)
      except (ValueError, FileNotFoundError, train.NonFiniteLoss) as error:
        cli.fail(error)
  except (ValueError, FileNotFoundError) as error:
    cli.fail(error)
  except Exception as error:
    if not jax.distributed.is_initialized():
      raise
    if isinstance(error, jax.errors.JaxRuntimeError):  # a collective whose peer has gone
      cli.fail(f"process {jax.process_index()}: a collective with the other processes failed, "
               f"one of them having stopped (its own error says why): "
               f"{distributed.first_line(error)}")
    traceback.print_exc()  # then exit without waiting for processes blocked in a collective
    cli.exit_now(1)
  cli.exit_now(0)  # ~1 s of teardown saved per study run


if __name__ == "__main__":
  app.run(main, argv=cli.json_config(sys.argv), flags_parser=cli.parse_flags)
