"""Tests run on the CPU backend even where libtpu is installed (the
`tpu-aot` extra): otherwise every JAX process would try to open a TPU.

Compiled programs go to a persistent compilation cache made fresh for the
session (shared with pytest-xdist workers and the tests' subprocesses,
which inherit the environment): many tests build the same small train
step again, and XLA compiling it is most of their time."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="ir_jax_test_jit_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
  """`tpu_compile` tests compile for real TPU topologies with libtpu (the
  `tpu-aot` extra, which pins jax to a release that has a matching libtpu):
  skipped where it is not installed, as under a plain `.[test]` install."""
  from ir_jax import aot
  if aot.libtpu_available():
    return
  import pytest
  skip = pytest.mark.skip(reason="libtpu not installed: pip install -e "
                          "'.[test,tpu-aot]' (.ci/run's TPU-compile step)")
  for item in items:
    if "tpu_compile" in item.keywords:
      item.add_marker(skip)
