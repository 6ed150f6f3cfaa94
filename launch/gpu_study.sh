#!/bin/bash
# A whole study on one accelerator (a GPU) in at most BUDGET seconds, then its report. $OUT ends
# with report.md (the findings page), its two findings figures and study.tar.gz (the tables and
# figures, the study's log and each run's train.log; `tar -xzf study.tar.gz` reads them). The
# study itself (checkpoints, stores) lives in $WORK, outside $OUT; run the same command with the
# same WORK to resume one that the budget cut short.
#
#   OUT=/tmp/gpu_study bash launch/gpu_study.sh                                  # mini.py:gpu
#   STUDY=experiments/studies/related_vs_unrelated.py:device=gpu bash launch/gpu_study.sh
#   STUDY=experiments/studies/mini.py ONLY='scratch-sr_x2-lr3e-3-s0' BUDGET=400 \
#       bash launch/gpu_study.sh                                                 # a CPU rehearsal
#
# Environment: STUDY (a study config; experiments/studies/mini.py:gpu), OUT (/tmp/gpu_study; a
# new or empty folder), WORK (the study's workdir; /tmp/gpu_study_work), BUDGET (seconds for the
# set-up and the study; 420: with the report, at most 90 s, one 10-minute call on a lent
# machine), PARALLEL (runs at once; 4 on a GPU, sharing it: the tiny runs are bound by their
# start-up and step dispatch, not by the device; 2 without one), ONLY (launch/study.py --only).
# Wheels the machine lacks go in ./.whl (ignored by git; launch/gpu_wheels.sh makes it):
# launch/gpu_env.sh installs them.
STUDY=${STUDY:-experiments/studies/mini.py:gpu}
OUT=${OUT:-/tmp/gpu_study}
WORK=${WORK:-/tmp/gpu_study_work}
BUDGET=${BUDGET:-420}
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "BUDGET=$BUDGET: give a whole number" >&2; exit 1; }
# the script packs and removes every file in $OUT at its end: a new or empty folder only
[ -z "$(ls -A "$OUT" 2>/dev/null)" ] ||
  { echo "OUT=$OUT holds files; give a new or empty folder" >&2; exit 1; }
mkdir -p "$OUT"
START=$(date +%s)  # the set-up's time limits (gpu_env.sh) are spent from the budget too
source launch/gpu_env.sh

if [ -s "$OUT/gpu.txt" ]; then
  PARALLEL=${PARALLEL:-4}
  DEVICES=$(printf '0,%.0s' $(seq "$PARALLEL")); DEVICES=${DEVICES%,}  # every run on GPU 0
  export XLA_PYTHON_CLIENT_PREALLOCATE=false  # runs side by side: none takes 75% up front
else
  PARALLEL=${PARALLEL:-2}
  DEVICES=none
fi
LEFT=$(( BUDGET - ($(date +%s) - START) ))
[ "$LEFT" -ge 30 ] || LEFT=30  # a set-up that spent the budget: the study still starts (resumable)
echo "== study $STUDY in $WORK: $PARALLEL runs at once (--devices=$DEVICES), at most ${LEFT}s"
# SIGTERM at the budget: the running runs checkpoint and stop (launch/study.py), -k: then killed.
timeout -k 30 "$LEFT" python3 launch/study.py --config="$STUDY" --workdir="$WORK" \
    --max_parallel="$PARALLEL" --devices="$DEVICES" --compile_cache="$WORK/.jax_cache" \
    ${ONLY:+--only="$ONLY"} > "$OUT/study.log" 2>&1
RC=$?
SECONDS_USED=$(( $(date +%s) - START ))
grep -v "^\[" "$OUT/study.log" | tail -n 15
echo "== study rc=$RC; set-up and study ${SECONDS_USED}s$([ $RC -eq 124 ] && echo ' (budget spent: the same command resumes it)')"

timeout 90 python3 launch/report.py --workdir="$WORK" > "$OUT/report.log" 2>&1
echo "== report rc=$?"
cp -r "$WORK/report.md" "$WORK/tables" "$WORK/figures" "$OUT/" 2>/dev/null
mkdir -p "$OUT/runs"
for log in "$WORK"/runs/*/train.log; do
  [ -f "$log" ] && cp "$log" "$OUT/runs/$(basename "$(dirname "$log")").log"
done
echo
echo "## gpu_study: $(head -n 1 "$OUT/gpu.txt" 2>/dev/null || echo no GPU); $(cat "$OUT/jax.txt"); $STUDY, set-up and study ${SECONDS_USED}s (rc $RC)"
sed -n '/^## Findings/,/^## Main table/p' "$OUT/report.md" 2>/dev/null | sed '$d'
sed -n '/^## Main table/,/^Y-PSNR/p' "$OUT/report.md" 2>/dev/null | sed '$d'
cp "$OUT"/figures/findings-*.png "$OUT/" 2>/dev/null
pack study.tar.gz report.md findings-delta.png findings-conflict.png
