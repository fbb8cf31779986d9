"""What the benchmarks share: fake devices, interleaved timing, plotting and writing results.

Benchmarks are scripts (STYLE.md): each writes a JSON file and a PNG under ``results/`` and
refuses to replace existing result files unless given ``--overwrite``. Nothing here imports
JAX at module level, so a benchmark can still set its device flags before JAX starts.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from rl_ring.io import check_output_files, device_flags, save_figure, write_json

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (default outputs and ``results/`` live under it)."""

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


# ---------------------------------------------------------------------------- devices
def fake_cpu_devices(n: int) -> None:
    """Asks for ``n`` fake CPU devices (before JAX starts its backend).

    The kernels stay multi-threaded: the benchmarks time them, and have always been measured
    so (see :func:`rl_ring.io.device_flags` for why training processes make them
    single-threaded).
    """
    os.environ["XLA_FLAGS"] = device_flags(n, os.environ.get("XLA_FLAGS", ""),
                                           single_threaded_kernels=False)


# ---------------------------------------------------------------------------- timing
def round_robin(calls: dict[K, Callable[[], T]], rounds: int) -> dict[K, list[T]]:
    """Calls every case once per round, ``rounds`` rounds; each case's results in order.

    The cases take turns, so a change in the machine's load (other processes) falls on all
    of them alike; compare cases by their medians.
    """
    out: dict[K, list[T]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, call in calls.items():
            out[key].append(call())
    return out


def timed(fn: Callable[[], Any]) -> float:
    """Seconds that ``fn()`` takes, its result waited for (JAX dispatches asynchronously)."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def median(xs: Iterable[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    return statistics.median(list(xs))


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (rounded), or None where the OS has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------- inputs
def at_tokens(batch: int, seq: int, feature_dim: int, act_dim: int, *,
              seed: int = 0) -> dict[str, np.ndarray]:
    """A random batch in the Agentic Transformer's 4-token step layout (return-to-go, state,
    action, reward), loss on the state tokens: the ``TokenBatch`` fields ``[batch, seq, ...]``.

    Timings and compiled memory depend on the shapes only, not on the values.
    """
    from rl_ring.data.batch import Kind

    rng = np.random.default_rng(seed)
    pos = np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()
    kinds = np.array([Kind.RTG, Kind.STATE, Kind.ACTION, Kind.REWARD], np.int32)[pos % 4]
    return dict(
        kind=kinds, values=rng.normal(size=(batch, seq, feature_dim)).astype(np.float32),
        positions=pos, timesteps=(pos // 4) % 1000, segment_ids=np.zeros((batch, seq), np.int32),
        valid=np.ones((batch, seq), bool),
        target=rng.uniform(-1, 1, (batch, seq, act_dim)).astype(np.float32),
        target_ids=np.zeros((batch, seq), np.int32),
        loss_mask=(kinds == Kind.STATE).astype(np.float32),
    )


# ---------------------------------------------------------------------------- outputs
def resolve_out(path: str | os.PathLike, root: Path | None = None) -> Path:
    """``path``, relative ones taken under ``root`` (default: the working directory)."""
    path = Path(path)
    return path if path.is_absolute() or root is None else root / path


def check_outputs(paths: Iterable[str | os.PathLike | None], *, overwrite: bool,
                  what: str) -> None:
    """Refuses, before any work, to replace existing result files without ``--overwrite``
    (``None`` entries, outputs switched off, are skipped)."""
    check_output_files([p for p in paths if p], overwrite=overwrite, what=what)


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Writes ``fig`` as a PNG atomically and closes it."""
    try:
        return save_figure(fig, path, dpi=dpi)
    finally:
        pyplot().close(fig)


def write_result(result: dict[str, Any], path: str | os.PathLike,
                 plot: Callable[[dict[str, Any], Path], None] | None = None,
                 png: str | os.PathLike | None = None) -> Path:
    """Writes ``result`` as JSON at ``path`` and, with ``plot``, its figure at ``png``
    (default: beside the JSON), each atomically."""
    path = write_json(result, path)
    if plot is not None:
        plot(result, Path(png) if png else path.with_suffix(".png"))
    return path
