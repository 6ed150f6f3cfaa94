"""Turn an official IPT checkpoint (PyTorch .pt, Chen et al. 2021) into an mtl workdir.

  python launch/import_ipt.py --checkpoint=IPT_pretrain.pt --workdir=/ckpt/ipt_pretrain
  python launch/import_ipt.py --checkpoint=IPT_sr2.pt --workdir=/ckpt/ipt_sr2 [--tasks=sr_x2]

The workdir (config.json + an orbax checkpoint at step 0, as launch/train.py writes them) is
accepted by every other command: launch/restore.py, launch/ipt_published.py, init_from of a
fine-tune, and launch/analyze.py --checkpoint=DIR --batch_size=16 (the default 128 images per
task of six tasks is more than paper-size memory).
Tasks default to the published order (pre-trained: sr_x2, sr_x3, sr_x4, derain, denoise_30,
denoise_50) or the released file's name (IPT_denoise30.pt -> denoise_30). torch is not needed.
Bad input: one line on stderr, exit status 1.
"""
import _root  # noqa: F401  (repository root on sys.path for `mtl` and `experiments`)
import cli
from absl import app, flags

flags.DEFINE_string("checkpoint", None, "Official IPT state_dict (.pt).")
flags.DEFINE_string("workdir", None, "New mtl workdir to write.")
flags.DEFINE_list("tasks", [], "Task of each head, in order (default: from the layout/file name).")
flags.DEFINE_string("size", "paper", "Named size the file must have (mtl.models.ipt.SIZES); gives "
                    "num_heads. '' infers every field from the file (then pass --num_heads).")
flags.DEFINE_integer("num_heads", 0, "Attention heads (not stored in a state_dict); 0: from --size.")
cli.required_paths("checkpoint", "workdir")


@cli.absl_main
def main():
  from mtl import run_state
  from mtl.models import ipt, ipt_import
  f = flags.FLAGS
  cfg, names, params = ipt_import.load(f.checkpoint, f.tasks or None, f.num_heads or None, f.size)
  run_state.write_workdir(params, cfg, names, f.workdir, source=f.checkpoint)
  print(f"imported {f.checkpoint} -> {f.workdir}: tasks {', '.join(names)}; "
        f"{ipt.count_params(params) / 1e6:.2f}M parameters "
        f"(body {ipt.count_params(params['body']) / 1e6:.2f}M)", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
