"""Tests run on the CPU backend even where libtpu is installed (the
`tpu-aot` extra): otherwise every JAX process would try to open a TPU."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
