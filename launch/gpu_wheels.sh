#!/bin/bash
# Prepares, on a machine with PyPI, what launch/gpu_check.sh and launch/gpu_study.sh need on a
# bare GPU machine that reaches nothing: ./.whl, the wheels of mtl's dependencies that its image
# lacks (Python 3.12, manylinux x86-64; at the versions this machine runs where it has them), and
# with IPT_REPO set, ./.ipt, a copy of that checkout of huawei-noah/Pretrained-IPT (the PyTorch
# peer's model code, without its weights). Both folders are ignored by git; carry them.
#
#   bash launch/gpu_wheels.sh                                  # from the repository root
#   IPT_REPO=/path/to/Pretrained-IPT bash launch/gpu_wheels.sh
set -euo pipefail
# What the GPU image lacks of mtl's dependencies (it has jax, flax, optax, orbax, absl, numpy, ...).
MISSING="tensorflow-datasets tensorflow-metadata array_record grain ml_collections dm-tree
immutabledict promise simple-parsing docstring_parser termcolor toml portpicker
googleapis-common-protos tzdata"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
mkdir -p .whl
for name in $MISSING; do
  version=$(python3 -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)
  spec=$name${version:+==$version}
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp "${PLATFORMS[@]}" -d .whl "$spec" 2> /dev/null; then
    python3 -m pip wheel -q --no-deps "$spec" -w .whl  # a source-only package (promise)
  fi
done
echo "$(ls .whl | wc -l) wheels in .whl ($(du -sh .whl | cut -f1)): $(ls .whl | tr '\n' ' ')"
if [ -n "${IPT_REPO:-}" ]; then
  [ -f "$IPT_REPO/model/ipt.py" ] || { echo "IPT_REPO=$IPT_REPO has no model/ipt.py" >&2; exit 1; }
  rm -rf .ipt && mkdir .ipt
  (cd "$IPT_REPO" && tar -cf - --exclude=.git --exclude='*.pt' --exclude='*.pth' .) | tar -xf - -C .ipt
  echo ".ipt: $(du -sh .ipt | cut -f1) from $IPT_REPO"
fi
