"""Test configuration: 8 fake CPU devices, set before JAX starts."""

import os

from rl_ring.io import device_flags

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
