"""launch/gpu_check.sh and launch/gpu_study.sh, the prepared accelerator scripts, run on this
machine: the check's parts picked by PARTS run in the script's order, a spent budget skips them
(and says so), a part's rows reach the closing table; a study's report comes back in OUT; each
leaves OUT as few files as a lent machine sends back (at most 8, none in a folder); the PyTorch
part's pre-checks skip it with their reason; the diagnosis's compile parts compile first."""
import os
import subprocess
import sys
import tarfile

from micro_study import MICRO_STUDY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = ["tests", "compile", "sweep", "torch_peer", "probe", "startup", "pipeline", "main_job",
         "compile_scanned"]
DIAGNOSE = ["trace", "cmdbuf", "unroll", "gram_chunk", "probe_looped", "llvm_parallel", "cublas",
            "autotune0"]


def _gpu_check(tmp_path, **env):
  out = tmp_path / "out"
  proc = subprocess.run(["bash", "launch/gpu_check.sh"], cwd=ROOT, capture_output=True,
                        text=True, timeout=300,
                        env={**os.environ, "OUT": str(out), "SIZE": "tiny", "BATCHES": "2,4",
                             "IPT_REPO": str(tmp_path / "no-checkout"), **env})
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert sorted(os.listdir(out)) == ["logs.tar.gz", "parts.tsv", "table.md"]
  parts = [line.split("\t") for line in (out / "parts.tsv").read_text().splitlines()]
  return proc.stdout, parts, (out / "table.md").read_text()


def _packed(archive):
  with tarfile.open(archive) as tar:
    return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_parts_run_in_the_script_s_order_and_a_spent_budget_skips_them(tmp_path):
  # Asked for diagnosis first: the check still comes first. A 10-second budget is spent by the
  # set-up, so every part is skipped with its reason, and nothing is run.
  _, parts, table = _gpu_check(tmp_path, PARTS="diagnose check", BUDGET="10")
  assert [p[0] for p in parts] == CHECK + DIAGNOSE
  reasons = {p[0]: (p[1], p[3]) for p in parts}
  assert reasons["torch_peer"][0] == "skipped" and "no official IPT checkout" in reasons[
      "torch_peer"][1]
  assert all(reasons[n] == ("skipped", "budget spent") for n in CHECK + DIAGNOSE
             if n != "torch_peer")
  assert all(f"| {n} | skipped |" in table for n in CHECK + DIAGNOSE)
  assert _packed(tmp_path / "out" / "logs.tar.gz")["jax.txt"].startswith(b"jax ")


def test_a_part_runs_its_command_and_its_rows_reach_the_table(tmp_path):
  stdout, parts, table = _gpu_check(tmp_path, PARTS="pipeline", BUDGET="200")
  assert [p[:2] for p in parts] == [["pipeline", "0"]]
  assert "== pipeline rc=0" in stdout
  assert "| pipeline | 0 |" in table
  # the benchmark's own rows (crops/s per host core, 3 and 6 tasks), printed as it went
  rows = [line.split(" | ") for line in table.splitlines()
          if line.startswith("| pipeline: crops/s per host core")]
  assert len(rows) == 2 and all(float(r[4]) > 0 for r in rows), table
  assert b"crops/s" in _packed(tmp_path / "out" / "logs.tar.gz")["pipeline.log"]


def test_the_torch_part_is_skipped_with_its_reason_when_torch_cannot_be_imported(tmp_path):
  """With a checkout, the PyTorch part's second pre-check: a TORCH_PYTHON that cannot import
  torch and einops skips the part (its reason in the table), as a missing checkout does."""
  (tmp_path / "ipt" / "model").mkdir(parents=True)
  (tmp_path / "ipt" / "model" / "ipt.py").write_text("")
  _, parts, table = _gpu_check(tmp_path, PARTS="torch_peer", BUDGET="200",
                               IPT_REPO=str(tmp_path / "ipt"), TORCH_PYTHON="false")
  assert parts == [["torch_peer", "skipped", "0", "false cannot import torch and einops"]]
  assert "| torch_peer | skipped | 0 | false cannot import torch and einops |" in table


def _benchmark_stand_in(tmp_path, error=""):
  """A PATH entry whose python3 stands in for launch/benchmark.py: it prints its arguments (and
  `error`, then exits 1, if given); the set-up's other python3 commands go to this Python."""
  shim = tmp_path / "bin" / "python3"
  shim.parent.mkdir()
  done = f'echo "{error}"; exit 1' if error else "exit 0"
  shim.write_text(f'#!/bin/bash\n[ "$1" = launch/benchmark.py ] && {{ echo "args: $*"; {done}; }}'
                  f'\nexec {sys.executable} "$@"\n')
  shim.chmod(0o755)
  return f"{shim.parent}:{os.environ['PATH']}"


def test_the_compile_settings_parts_compile_before_they_train(tmp_path):
  """llvm_parallel, cublas and autotune0 weigh a setting's compile seconds against the compile
  part's, which compiles in a fresh process: their compile section runs first (sections run in
  flag order), before the train section's compiles warm XLA's in-process autotuning."""
  names = ["llvm_parallel", "cublas", "autotune0"]
  _, parts, _ = _gpu_check(tmp_path, PARTS=" ".join(names), BUDGET="200",
                           PATH=_benchmark_stand_in(tmp_path))
  assert [p[:2] for p in parts] == [[n, "0"] for n in names], parts
  logs = _packed(tmp_path / "out" / "logs.tar.gz")
  for name in names:
    args = logs[f"{name}.log"].decode().split()
    assert "--sections=compile,train" in args, (name, args)


def test_a_failed_part_s_reason_reaches_the_table(tmp_path):
  """The pre-checks pass (a checkout; `true` imports anything), so the PyTorch part runs, in
  three precisions: the benchmark's one error line (a peer that did not start) is the part's
  note in the table."""
  (tmp_path / "ipt" / "model").mkdir(parents=True)
  (tmp_path / "ipt" / "model" / "ipt.py").write_text("")
  error = "error: --against=torch: the PyTorch peer did not run: x | y"
  _, parts, table = _gpu_check(tmp_path, PARTS="torch_peer", BUDGET="200",
                               IPT_REPO=str(tmp_path / "ipt"), TORCH_PYTHON="true",
                               PATH=_benchmark_stand_in(tmp_path, error))
  note = "error: --against=torch: the PyTorch peer did not run: x / y"
  assert [(p[0], p[1], p[3]) for p in parts] == [("torch_peer", "1", note)], parts
  assert f"| {note} |" in table
  args = _packed(tmp_path / "out" / "logs.tar.gz")["torch_peer.log"].decode().split()
  assert "--torch_precisions=fp32,tf32,bf16" in args and "--against=torch" in args, args


def test_the_gpu_study_script_runs_a_study_and_brings_back_its_report(tmp_path):
  """launch/gpu_study.sh (no GPU here: two runs side by side on the CPU): the study's runs, its
  report and every run's train.log land in OUT, the study itself in WORK."""
  study_file = tmp_path / "micro.py"
  study_file.write_text(MICRO_STUDY)
  out, work = tmp_path / "out", tmp_path / "work"
  proc = subprocess.run(["bash", "launch/gpu_study.sh"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, OUT=str(out), WORK=str(work),
                                              STUDY=str(study_file), ONLY="scratch-*",
                                              BUDGET="400"))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "== study rc=0" in proc.stdout and "== report rc=0" in proc.stdout
  packed = _packed(out / "study.tar.gz")
  # The findings figures are copied to the top where the report drew them (a scratch-only study
  # has no Δ and no conflict to draw).
  drawn = sorted(n.split("/")[1] for n in packed if n.startswith("figures/findings-"))
  assert sorted(os.listdir(out)) == sorted(drawn + ["report.md", "study.tar.gz"])
  assert sorted(n for n in packed if n.startswith("runs/")) == [
      "runs/scratch-denoise_30-lr1e-3-s0.log", "runs/scratch-derain-lr1e-3-s0.log"]
  assert "## Findings" in (out / "report.md").read_text() and (work / "runs").is_dir()
  assert "study.log" in packed and any(n.startswith("tables/") for n in packed)
  assert "## gpu_study: no GPU" in proc.stdout or "## gpu_study: NVIDIA" in proc.stdout
