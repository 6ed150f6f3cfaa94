#!/bin/bash
# One prepared check of mtl's speed on an accelerator (a GPU), in at most BUDGET seconds: the test
# subset that runs on GPUs, compile seconds (both body-call modes), a batch sweep with MFU, the
# official PyTorch IPT on the same device (fp32: PyTorch's defaults, FP32 matmuls and TF32 convs;
# tf32: TF32 both, as mtl's float32 at JAX's default precision; bf16 autocast; interleaved), the
# probe / plain joint step ratio, start-up (command to first step, cold and warm compilation
# cache), the input pipeline, the main job, where the steps' time goes op by op (a profiler
# trace), and seven settings weighed against the defaults: CUDA graphs over the layer loops,
# unrolled layer scans, looped body calls in the joint steps, the probe's Gramians in pieces
# (split-K), LLVM compiling a program's parts in parallel, cuBLAS alone for gemms, no XLA GPU
# autotuning. Every part has its own time limit and log (the set-up's steps too: pip, the device
# probe, the PyTorch import check); one table at the end. $OUT ends with three files, within
# what a lent machine sends back: table.md, parts.tsv and logs.tar.gz (every part's log, pip's,
# the device's, the main job's train.log and results.json; `tar -xzf logs.tar.gz` reads them).
#
#   OUT=/tmp/gpu_check bash launch/gpu_check.sh                   # from the repository root
#   SIZE=tiny BATCHES=2,4 LIMITS=3 BUDGET=1200 bash launch/gpu_check.sh   # a rehearsal on a CPU
#   PARTS=diagnose bash launch/gpu_check.sh                       # only the diagnosis parts
#
# Environment: OUT (logs; default /tmp/gpu_check; a new or empty folder), BUDGET (seconds; 540:
# one 10-minute call on a lent machine, its set-up and the packing included; the check's own
# parts come first), SIZE (paper), BATCHES (the sweep's batch sizes; 8,32,128), PEER_BATCHES
# (PyTorch's; 8,32), REPEATS (5), PRECISION (bfloat16), LIMITS (a whole-number factor on every
# part's time limit; 1), IPT_REPO (a checkout of huawei-noah/Pretrained-IPT; default ./.ipt: the
# PyTorch part is skipped without it or without torch), TORCH_PYTHON (python3), TEST_WORKERS
# (pytest-xdist processes; 4), PARTS (the parts to run, space-separated, in this script's order
# whatever theirs: 'check' = the check's, 'diagnose' = the diagnosis's; default 'check diagnose').
# Wheels the machine lacks go in ./.whl (ignored by git; launch/gpu_wheels.sh makes it, and .ipt):
# launch/gpu_env.sh installs them first.
BUDGET=${BUDGET:-540}
OUT=${OUT:-/tmp/gpu_check}
SIZE=${SIZE:-paper}
BATCHES=${BATCHES:-8,32,128}
PEER_BATCHES=${PEER_BATCHES:-8,32}
REPEATS=${REPEATS:-5}
PRECISION=${PRECISION:-bfloat16}
LIMITS=${LIMITS:-1}
IPT_REPO=${IPT_REPO:-$PWD/.ipt}
TORCH_PYTHON=${TORCH_PYTHON:-python3}
TEST_WORKERS=${TEST_WORKERS:-4}
FIRST=${BATCHES%%,*}
SECOND=$(echo "$BATCHES" | cut -d, -f2)
LAST=${BATCHES##*,}
CHECK="tests compile sweep torch_peer probe startup pipeline main_job compile_scanned"
DIAGNOSE="trace cmdbuf unroll gram_chunk probe_looped llvm_parallel cublas autotune0"
PARTS=${PARTS:-check diagnose}
PARTS=${PARTS//check/$CHECK}
PARTS=${PARTS//diagnose/$DIAGNOSE}
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "BUDGET=$BUDGET: give a whole number" >&2; exit 1; }
[[ $LIMITS =~ ^[0-9]+$ ]] || { echo "LIMITS=$LIMITS: give a whole number" >&2; exit 1; }
[[ $REPEATS =~ ^[0-9]+$ ]] || { echo "REPEATS=$REPEATS: give a whole number" >&2; exit 1; }
# the script packs and removes every file in $OUT at its end: a new or empty folder only
[ -z "$(ls -A "$OUT" 2>/dev/null)" ] ||
  { echo "OUT=$OUT holds files; give a new or empty folder" >&2; exit 1; }
mkdir -p "$OUT"
START=$(date +%s)
CACHE=$(mktemp -d /tmp/gpu_check_cache.XXXXXX)  # shared by the timing parts; not in $OUT (large)
MAIN_JOB=$(mktemp -d /tmp/gpu_check_tiny.XXXXXX)  # the main job's workdir: its checkpoints stay here
trap 'rm -rf "$CACHE" "$MAIN_JOB"' EXIT
: > "$OUT/parts.tsv"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
wanted() { case " $PARTS " in *" $1 "*) return 0;; *) return 1;; esac; }
part() {  # part NAME LIMIT CMD...: runs CMD for at most LIMIT s (less if the budget is short)
  local name=$1 limit=$(( $2 * LIMITS )); shift 2
  wanted "$name" || return
  local l; l=$(( $(left) - 5 )); [ "$limit" -lt "$l" ] && l=$limit
  if [ "$l" -lt 15 ]; then
    echo "== $name: skipped (budget spent)"; printf '%s\tskipped\t0\tbudget spent\n' "$name" >> "$OUT/parts.tsv"
    return
  fi
  echo "== $name (limit ${l}s, $(left)s of the budget left): $*"
  local t0; t0=$(date +%s)
  timeout -k 5 "$l" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  grep -v -E "^(W|I)[0-9]{4} |^\s*$|^\| |^\|---|^ROW " "$OUT/$name.log" | tail -n 30
  local note=""; [ $rc -eq 124 ] || [ $rc -eq 137 ] && note="time limit"
  # a failed part's reason: the last one-line error its command printed (launch/benchmark.py's
  # `error: ...`, e.g. a PyTorch peer that did not start), as a table cell
  [ $rc -ne 0 ] && [ -z "$note" ] &&
    note=$(grep -E "^error: " "$OUT/$name.log" | tail -n 1 | cut -c1-300 | tr '|\t' '/ ')
  echo "== $name rc=$rc in $(( $(date +%s) - t0 ))s"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$note" >> "$OUT/parts.tsv"
}
skip() {  # skip NAME REASON
  wanted "$1" || return
  echo "== $1: skipped ($2)"; printf '%s\tskipped\t0\t%s\n' "$1" "$2" >> "$OUT/parts.tsv"
}

source launch/gpu_env.sh

# The check (the issue's items 1-5) first: the test subset and compile seconds, which no GPU has
# verified since their last changes, then the speed parts measured once (2026-12-04), again.
# -v: a line per test as it ends, so a subset cut by its limit still says which passed or failed.
# The tests mostly compile (host work): TEST_WORKERS processes share the device (none preallocates).
# A test module the machine cannot import is reported, and the others still run.
XLA_PYTHON_CLIENT_PREALLOCATE=false part tests 120 python3 -m pytest -v -p no:cacheprovider \
    -n "$TEST_WORKERS" -m "gpu and not cpu_only" --continue-on-collection-errors tests
BENCH=(python3 launch/benchmark.py --sizes="$SIZE" --precision="$PRECISION" --repeats="$REPEATS")
part compile 120 "${BENCH[@]}" --sections=compile --tasks=sr_x2 --batch_size="$FIRST"
# The steps' compiled programs are shared between the timing parts (the compile parts turn the
# cache off for their own timings; the start-up part keeps its own, empty at first).
part sweep 150 "${BENCH[@]}" --sections=train --tasks=sr_x2 --batch_size="$BATCHES" \
    --compile_cache="$CACHE"
# The PyTorch part's pre-checks, each a skip with its reason (the benchmark itself counts a peer
# it cannot start as a failure): the checkout, then torch and einops importable within at most
# 60 s of the budget (a hung import must not eat the call).
torch_peer_missing() {  # prints why the PyTorch part cannot run; nothing when it can
  [ -f "$IPT_REPO/model/ipt.py" ] ||
    { echo "no official IPT checkout at IPT_REPO=$IPT_REPO"; return; }
  local l; l=$(( $(left) - 20 )); [ "$l" -gt 60 ] && l=60
  [ "$l" -ge 5 ] || return 0  # the budget is spent: part says so
  timeout -k 5 "$l" "$TORCH_PYTHON" -c "import torch, einops" > /dev/null 2>&1
  case $? in
    0) ;;
    124|137) echo "$TORCH_PYTHON did not import torch and einops within ${l}s";;
    *) echo "$TORCH_PYTHON cannot import torch and einops";;
  esac
}
if wanted torch_peer; then
  why=$(torch_peer_missing)
  if [ -n "$why" ]; then
    skip torch_peer "$why"
  else
    # JAX takes 75% of the GPU's memory by default: leave PyTorch its share. The peer steps in
    # three precisions after each of ours: tf32 adds 2 tasks x 2 batches x 6 rounds = 24 steps,
    # none slower than an fp32 one (83-200 ms on the H200): under 5 s of the part's 120.
    XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 part torch_peer 120 "${BENCH[@]}" --sections=train \
        --tasks=sr_x2,denoise_30 --batch_size="$PEER_BATCHES" --against=torch \
        --torch_precisions=fp32,tf32,bf16 --ipt_repo="$IPT_REPO" \
        --torch_python="$TORCH_PYTHON" --compile_cache="$CACHE"
  fi
fi
part probe 120 "${BENCH[@]}" --sections=probe --probe_variants=plain,probe --batch_size="$FIRST" \
    --compile_cache="$CACHE"
# Two processes share the device here: neither takes 75% of its memory up front.
XLA_PYTHON_CLIENT_PREALLOCATE=false part startup 120 "${BENCH[@]}" --sections=startup \
    --batch_size="$FIRST"
part pipeline 45 python3 launch/benchmark.py --sections=pipeline --batch_size="$FIRST" --repeats=1
part main_job 100 python3 launch/train.py --config=experiments/tiny.py --workdir="$MAIN_JOB" \
    --compile_cache="$CACHE"
for f in train.log results.json; do
  [ -f "$MAIN_JOB/$f" ] && cp "$MAIN_JOB/$f" "$OUT/main_job_$f"
done
# The other body-call mode's compile seconds: a setting, not a target, so last of the check.
part compile_scanned 60 "${BENCH[@]}" --sections=compile --tasks=sr_x2 --batch_size="$FIRST" \
    --body_calls=scanned

# The diagnosis: where the one-task step's time goes at the smallest and largest batch, and the
# joint steps' (plain, probe) at the smallest: op time by kind and by stage, and the share of the
# wall time in which the device runs an op at all (low: it waits for its launches). Its rows
# ("[trace part, untraced]") are the baselines of the settings below, timed alike in this run.
part trace 90 "${BENCH[@]}" --sections=trace --tasks=sr_x2 --batch_size="$FIRST,$LAST" \
    --compile_cache="$CACHE"
# The layer scans are while loops, which XLA's CUDA graphs leave out by default: the one-task step
# with them in (a step that waits on its launches gains), then with the scans unrolled (no loops;
# a larger program to compile), at the trace's batches.
XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" \
    part cmdbuf 120 "${BENCH[@]}" --sections=train --tasks=sr_x2 --batch_size="$FIRST,$LAST"
part unroll 120 "${BENCH[@]}" --sections=train --tasks=sr_x2 --batch_size="$FIRST,$LAST" \
    --scan_unroll=12
# The probe's Gramians are products with a 2T x 2T output over every body leaf's millions of
# entries (per layer), in float32 at 'highest' precision: a gemm of that shape can run on a few
# of the GPU's cores. Cut into pieces of 64K entries, multiplied as a batch and summed, they
# spread over all of them (the trace part's 'gramians' stage says how long they take now).
part gram_chunk 120 "${BENCH[@]}" --sections=probe --probe_variants=plain,probe \
    --batch_size="$FIRST" --gramian_chunk=65536 --compile_cache="$CACHE"
# The joint steps with a body call per task (probe: per half) instead of one batched computation:
# the batched probe differentiates 2T broadcast copies of the body (at paper size, batch 8, its
# compiled temporaries exceed the looped probe's by 4.5 GiB on a CPU), the looped one compiles
# longer. `auto` picks batched on GPUs: this says whether that is the faster.
part probe_looped 120 "${BENCH[@]}" --sections=probe --probe_variants=plain,probe \
    --batch_size="$FIRST" --body_calls=looped --compile_cache="$CACHE"
# Compile seconds: XLA splits each program's LLVM module into parts compiled on parallel host
# threads (the GPU machine has 16 cores; NVIDIA's JAX-Toolbox sets this flag), the kernels the
# same. Then XLA's GPU autotuning (trying gemm and convolution algorithms), part of every
# compile: the compile seconds and the one-task step with cuBLAS as the only gemm candidate (no
# Triton gemm kernels compiled to try), then with no autotuning at all, each against its speed
# (their baselines: the compile part's rows, and the trace part's; PARTS='compile llvm_parallel
# cublas autotune0' runs them with the first). The sections run in flag order: compile first,
# in a fresh process as the compile part's, so that compile seconds compare cold with cold (after
# the train section, XLA's in-process autotuning results would be warm).
XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_llvm_module_compilation_parallelism=true" \
    part llvm_parallel 90 "${BENCH[@]}" --sections=compile,train --tasks=sr_x2 --batch_size="$FIRST"
XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_triton_gemm=false" part cublas 90 \
    "${BENCH[@]}" --sections=compile,train --tasks=sr_x2 --batch_size="$FIRST"
XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_autotune_level=0" part autotune0 90 "${BENCH[@]}" \
    --sections=compile,train --tasks=sr_x2 --batch_size="$FIRST"

{
  echo
  echo "## gpu_check: $(head -n 1 "$OUT/gpu.txt" 2>/dev/null || echo no GPU); $(cat "$OUT/jax.txt"); SIZE=$SIZE, $(( $(date +%s) - START ))s in all"
  echo
  echo "| part | exit | seconds | note |"
  echo "|---|---|---|---|"
  while IFS=$'\t' read -r name rc seconds note; do
    case $name in
      tests) note="${note:+$note; }$(grep -cE " PASSED( |$)" "$OUT/tests.log") passed, $(grep -cE " (FAILED|ERROR)( |$)" "$OUT/tests.log") failed: $(grep -oE "^[^ ]+ (FAILED|ERROR)|(FAILED|ERROR) tests/[^ ]+" "$OUT/tests.log" | sed -E 's/^(FAILED|ERROR) //; s/ (FAILED|ERROR)$//' | sort -u | tr '\n' ' ')";;
      main_job) note="${note:+$note; }$(grep -E "^step " "$OUT/main_job.log" 2>/dev/null | tail -n 1 | cut -d'|' -f1-3 | tr '|' ',')";;
    esac
    echo "| $name | $rc | $seconds | $note |"
  done < "$OUT/parts.tsv"
  echo
  # launch/benchmark.py prints each row as it finishes (ROW | ... |): a part cut short keeps them.
  echo "| what | size | batch | precision | ms/step, s or crops/s | images/s | MFU | MFU (XLA) | peak GiB | PyTorch ms (faster) |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for name in sweep torch_peer probe trace compile compile_scanned startup pipeline; do
    [ -f "$OUT/$name.log" ] && grep -E "^ROW \| " "$OUT/$name.log" | cut -c5-
  done
  for variant in "cmdbuf:CUDA graphs +WHILE" "unroll:scan_unroll 12" \
      "gram_chunk:Gramians split-K 64K" "probe_looped:body calls looped" \
      "llvm_parallel:LLVM in parallel" "cublas:Triton gemm off" "autotune0:autotune 0"; do
    [ -f "$OUT/${variant%%:*}.log" ] && grep -E "^ROW \| " "$OUT/${variant%%:*}.log" | cut -c5- \
        | sed "s/^| /| ${variant#*:}: /"
  done
  echo
  echo "(commands: first lines of <part>.log in $OUT/logs.tar.gz; each row's figures: median over"
  echo "REPEATS=$REPEATS)"
} | tee "$OUT/table.md"

# A lent machine sends back at most 8 files: all but the table and parts.tsv in one archive.
pack logs.tar.gz table.md parts.tsv
