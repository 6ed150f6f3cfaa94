# Sourced by launch/gpu_check.sh and launch/gpu_study.sh (from the repository root, $OUT set):
# the wheels a bare GPU machine lacks (./.whl, ignored by git) installed into /tmp/site where
# python3 cannot import mtl's dependencies, the repository on PYTHONPATH, and the device and the
# jax version printed into $OUT.
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
if ls .whl/*.whl > /dev/null 2>&1 && \
    ! python3 -c "import tensorflow_datasets, grain, ml_collections" > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl > "$OUT/pip.log" 2>&1 || { tail "$OUT/pip.log"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm \
    --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
    2>&1 | tail -n 1 | tee "$OUT/jax.txt"
