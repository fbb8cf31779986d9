"""Test configuration: 8 fake CPU devices, set before JAX starts."""

import atexit
import os
import shutil
import tempfile

# One persistent compilation cache for the whole run (this process and the subprocesses the
# tests start, which inherit the variables): the suite compiles the same small programs
# many times over (each test's model, train step and cached decode), and a hit replaces a
# compile. The cache key covers the program, XLA_FLAGS and the backend, so results are the
# same bits; the folder is this run's own and removed at exit. Set JAX_COMPILATION_CACHE_DIR
# to keep one across runs. Must be set before JAX is imported.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache_dir = tempfile.mkdtemp(prefix="rl_ring_tests_jax_cache_")
    atexit.register(shutil.rmtree, _cache_dir, True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from rl_ring.io import device_flags  # noqa: E402

# Must run before any JAX backend is touched: tests exercise meshes of 1, 2, 4 and 8 devices.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    # Multi-threaded kernels, as the tests have always run (bit-for-bit comparisons with
    # subprocesses use XLA_FLAGS_AT_START below).
    os.environ["XLA_FLAGS"] = device_flags(8, _flags, single_threaded_kernels=False)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The flags this test process's JAX runs with: subprocesses that must compute bit for bit
# what this process computes get exactly these (a test may change os.environ later).
XLA_FLAGS_AT_START = os.environ["XLA_FLAGS"]
os.environ.setdefault("MUJOCO_GL", "disable")

# Start JAX's backend now, with the flags above: a test that sets other flags for its own
# runs (the quickstart's single-threaded kernels) must not decide them for the tests after it.
import jax  # noqa: E402

jax.devices()
