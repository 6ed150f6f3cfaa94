# Sourced by launch/gpu_check.sh and launch/gpu_study.sh (from the repository root, $OUT set):
# the wheels a bare GPU machine lacks (./.whl, ignored by git) installed into /tmp/site where
# python3 cannot import mtl's dependencies, the repository on PYTHONPATH, the device and the
# jax version printed into $OUT; and `pack`, which leaves $OUT few files at the end. Each step has
# a time limit (a hung pip, driver or device probe would otherwise eat the whole call); their
# seconds come out of gpu_check.sh's BUDGET, whose clock starts before this is sourced.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
if ls .whl/*.whl > /dev/null 2>&1 && ! timeout -k 5 60 \
    python3 -c "import tensorflow_datasets, grain, ml_collections" > /dev/null 2>&1; then
  timeout -k 5 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1
  case $? in
    0) ;;
    124|137) echo "pip install of .whl did not finish within 120 s" | tee -a "$OUT/pip.log"
             exit 1;;
    *) tail "$OUT/pip.log"; exit 1;;
  esac
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
command -v nvidia-smi > /dev/null && timeout -k 5 30 nvidia-smi \
    --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
timeout -k 5 90 python3 -c \
    "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
    > "$OUT/jax_probe.log" 2>&1
case $? in
  124|137) echo "jax: the device probe (import jax, jax.devices()) did not answer within 90 s";;
  *) tail -n 1 "$OUT/jax_probe.log";;
esac | tee "$OUT/jax.txt"
rm -f "$OUT/jax_probe.log"

# A lent machine sends back at most 8 files (and none deeper than 2 folders): the scripts end by
# packing all but their headline files into one archive.
pack() {  # pack ARCHIVE KEEP...: every other file in $OUT into ARCHIVE, then removed
  local archive=$1; shift
  local keep=" $archive $* " files=() f
  for f in "$OUT"/*; do
    case "$keep" in *" ${f##*/} "*) ;; *) files+=("${f##*/}");; esac
  done
  [ ${#files[@]} -eq 0 ] || { tar -C "$OUT" -czf "$OUT/$archive" "${files[@]}" &&
      (cd "$OUT" && rm -rf "${files[@]}"); }
}
