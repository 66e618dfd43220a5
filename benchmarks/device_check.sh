#!/usr/bin/env bash
# One prepared run on a GPU machine (Hopper), under 5 minutes: the kernel tests
# (on a GPU, implementation="pallas" is the Mosaic GPU kernel, checked
# against the XLA wavefront), then forward+backward of Pallas vs the XLA
# wavefront vs ott-jax SoftDTW for B=512, N=M in {64, 256, 1024}. Results
# land in $OUT.
#
# Uses the machine's own jax (CUDA build): nothing is pip-installed from the
# network. For the ott-jax column, put its wheel (and its dependencies') in
# .whl/ beside this repository's root; they are installed offline.
set -uo pipefail
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import jax; print(jax.__version__, jax.devices())"; } > "$OUT/device.txt" 2>&1
# On a GPU these tests run the real Mosaic GPU kernel against XLA (the
# others check interpret mode and lowering, already done on CPU in CI).
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_soft_edit_distance.py \
  -k "pallas_matches_xla or pallas_bfloat16" \
  > "$OUT/kernel_tests.log" 2>&1; echo "kernel tests exit $?" >> "$OUT/device.txt"
# Timings plus kernel-vs-XLA checks (max |grad| difference, exact equality).
timeout 150 python3 benchmarks/device_bench.py --out "$OUT/device_bench.json" \
  > "$OUT/device_bench.log" 2>&1; echo "bench exit $?" >> "$OUT/device.txt"
cat "$OUT/device.txt"
