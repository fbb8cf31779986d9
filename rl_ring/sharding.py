"""Mesh axis names, mesh construction, batch placement and multi-host start-up.

Every other module refers to mesh axes through the constants here; nothing else spells
"seq" or "data". A mesh is described by a spec string such as ``"data=2,seq=4"``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA = "data"
FSDP = "fsdp"
SEQ = "seq"
TENSOR = "tensor"
AXES: tuple[str, ...] = (DATA, FSDP, SEQ, TENSOR)
# Axes over which the batch dimension of activations is split.
BATCH_AXES: tuple[str, ...] = (DATA, FSDP)


@dataclass(frozen=True)
class MeshSpec:
    """Sizes of the four named mesh axes (1 for an axis that is not used)."""

    data: int = 1
    fsdp: int = 1
    seq: int = 1
    tensor: int = 1

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.data, self.fsdp, self.seq, self.tensor)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __str__(self) -> str:
        named = (f"{a}={n}" for a, n in zip(AXES, self.shape, strict=True) if n != 1)
        return ",".join(named) or "seq=1"


def parse_mesh_spec(spec: str | MeshSpec | dict[str, int]) -> MeshSpec:
    """Parses ``"data=2,seq=4"`` (or a dict, or a MeshSpec) into a :class:`MeshSpec`.

    Raises:
        ValueError: an unknown axis, an axis given twice, or a size that is not a positive int.
    """
    if isinstance(spec, MeshSpec):
        return spec
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        text = spec.strip()
        if not text:
            raise ValueError("mesh spec is empty; expected e.g. 'seq=8' or 'data=2,seq=4'")
        items = []
        for part in text.split(","):
            m = re.fullmatch(r"\s*([A-Za-z_]+)\s*=\s*(-?\d+)\s*", part)
            if m is None:
                raise ValueError(
                    f"mesh spec {spec!r}: cannot parse {part!r}; expected 'axis=size' with axis "
                    f"in {AXES}, e.g. 'data=2,seq=4'"
                )
            items.append((m.group(1), int(m.group(2))))
    sizes: dict[str, int] = {}
    for name, size in items:
        if name not in AXES:
            raise ValueError(f"mesh spec {spec!r}: unknown axis {name!r}; known axes are {AXES}")
        if name in sizes:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} is given twice")
        if not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} has size {size}; expected >= 1")
        sizes[name] = int(size)
    return MeshSpec(**sizes)


def device_hint(wanted: int) -> str:
    """How to get ``wanted`` devices, for error messages."""
    return (f"on a CPU, start the process with XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{wanted} (set before JAX starts) for {wanted} fake devices; to use fewer devices "
            "than the process has, pick the first N with --devices N (rl-ring train) and a mesh "
            "of N devices")


def make_mesh(
    spec: str | MeshSpec | dict[str, int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Builds a 4-axis (data, fsdp, seq, tensor) mesh from a spec.

    Args:
        spec: ``"data=2,seq=4"`` etc.; axes not named have size 1. ``None`` puts every
            device on the sequence axis.
        devices: devices to use (default: all of ``jax.devices()``).

    Raises:
        ValueError: the product of the axis sizes differs from the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    ms = MeshSpec(seq=len(devices)) if spec is None else parse_mesh_spec(spec)
    if ms.size != len(devices):
        raise ValueError(
            f"mesh spec '{ms}' has {ms.size} devices in all ({' x '.join(map(str, ms.shape))} over "
            f"{AXES}) but {len(devices)} devices are available; {device_hint(ms.size)}"
        )
    # Devices are laid out so that the seq axis varies fastest after tensor: neighbours on the
    # ring are neighbours in device order (same host first on a multi-host mesh).
    arr = np.asarray(devices, dtype=object).reshape(ms.shape)
    return Mesh(arr, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def axis_size(mesh: Mesh | None, axis: str) -> int:
    """Size of ``axis`` in ``mesh`` (1 when there is no mesh or the axis is absent)."""
    if mesh is None or axis not in mesh.shape:
        return 1
    return int(mesh.shape[axis])


def batch_shards(mesh: Mesh | None) -> int:
    """Devices the batch axes (``data`` x ``fsdp``) split a batch over (1 without a mesh)."""
    return math.prod(axis_size(mesh, a) for a in BATCH_AXES)


def batch_spec(mesh: Mesh, *, seq_sharded: bool = True) -> PartitionSpec:
    """PartitionSpec for ``[batch, seq, ...]`` activations and token batches."""
    batch = tuple(a for a in BATCH_AXES if a in mesh.shape) or None
    seq = SEQ if (seq_sharded and SEQ in mesh.shape) else None
    return PartitionSpec(batch, seq)


def batch_sharding(mesh: Mesh, ndim: int = 2, *, seq_sharded: bool = True) -> NamedSharding:
    """NamedSharding for an array whose first two axes are [batch, seq]."""
    spec = batch_spec(mesh, seq_sharded=seq_sharded)
    return NamedSharding(mesh, PartitionSpec(*spec, *([None] * (ndim - 2))))


def fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh | None) -> PartitionSpec:
    """``spec`` with every array axis that its mesh axes do not divide left replicated.

    Parameter placement rules live beside the model (``rl_ring.models.placement``); this is
    the mesh's part of them.
    """
    parts = list(spec) + [None] * (len(shape) - len(spec))
    if mesh is not None:
        for i, ax in enumerate(parts):
            if ax is None:
                continue
            names = ax if isinstance(ax, tuple) else (ax,)
            n = int(np.prod([axis_size(mesh, a) for a in names]))
            if shape[i] % n != 0:
                parts[i] = None
    return PartitionSpec(*parts)


# ----------------------------------------------------------------------------------------
# Multi-host start-up.
# ----------------------------------------------------------------------------------------


def init_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_count: int | None = None,
) -> bool:
    """Joins this process to a multi-process JAX runtime (one process per host).

    Arguments fall back to the environment: ``RL_RING_COORDINATOR`` (``host:port``),
    ``RL_RING_NUM_PROCESSES`` and ``RL_RING_PROCESS_ID``. With none of them set, and a single
    process requested, nothing is done (single-host run). On CPU, collectives go through gloo,
    so several local processes exercise the same path as a multi-host GPU/TPU cluster.
    On managed clusters (SLURM, TPU pods) call it with no arguments and no variables set:
    JAX then detects the cluster itself.

    Args:
        coordinator_address: ``"host:port"`` of process 0.
        num_processes: total number of processes.
        process_id: rank of this process in ``[0, num_processes)``.
        local_device_count: on CPU, number of fake devices this process contributes.

    Returns:
        True when ``jax.distributed`` was initialised.

    Raises:
        ValueError: inconsistent arguments (e.g. a process id outside the range).
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("RL_RING_COORDINATOR")
    if num_processes is None and env.get("RL_RING_NUM_PROCESSES"):
        num_processes = _env_int("RL_RING_NUM_PROCESSES")
    if process_id is None and env.get("RL_RING_PROCESS_ID"):
        process_id = _env_int("RL_RING_PROCESS_ID")

    if coordinator_address is None and num_processes in (None, 1) and process_id in (None, 0):
        if local_device_count:
            jax.config.update("jax_num_cpu_devices", int(local_device_count))
        return False
    if coordinator_address is None or num_processes is None or process_id is None:
        raise ValueError(
            "init_distributed needs coordinator_address, num_processes and process_id together "
            f"(got {coordinator_address!r}, {num_processes!r}, {process_id!r}); set them as "
            "arguments or RL_RING_COORDINATOR / RL_RING_NUM_PROCESSES / RL_RING_PROCESS_ID"
        )
    if ":" not in coordinator_address:
        raise ValueError(
            f"coordinator_address {coordinator_address!r} must be 'host:port', "
            "e.g. '127.0.0.1:1234'"
        )
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(
            f"process_id must be in [0, num_processes); got process_id={process_id}, "
            f"num_processes={num_processes}"
        )
    if local_device_count:
        jax.config.update("jax_num_cpu_devices", int(local_device_count))
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return True


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None
