"""The loader: puts a host's TokenBatch on the mesh as global, sharded arrays.

Batch rows are split over the (data, fsdp) axes and tokens over the seq axis
(``rl_ring.sharding.batch_sharding``). Each process draws only the rows its own devices
hold (the sampler's ``host_id`` / ``num_hosts``) and hands JAX the slices of them that each
local device needs; the same code serves one process or many.

For the load-balanced attention layouts (zigzag, striped) every per-token field is
permuted along the sequence before placement. ``positions`` is permuted like any other
field, so each token keeps its original global position and the masks and position
embeddings see exactly what they would in contiguous order.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from rl_ring import sharding
from rl_ring.attention import layout as layout_lib
from rl_ring.data.batch import TOKEN_FIELDS, TokenBatch

# Dtypes of the per-token fields on device (the sampler's numpy dtypes may be wider).
FIELD_DTYPES = {
    "kind": np.int32,
    "values": np.float32,
    "positions": np.int32,
    "timesteps": np.int32,
    "segment_ids": np.int32,
    "valid": np.bool_,
    "target": np.float32,
    "target_ids": np.int32,
    "loss_mask": np.float32,
}


@dataclass(frozen=True)
class HostShare:
    """The rows of the global batch this process feeds."""

    row_start: int
    """First global batch row held by this process's devices."""
    rows: int
    """Number of rows this process draws."""
    host_id: int
    """Index of this process's row block (the sampler's ``host_id``)."""
    num_hosts: int
    """Number of distinct row blocks (the sampler's ``num_hosts``)."""


def batch_divisor(mesh: Mesh) -> int:
    """How many ways the batch dimension is split (data x fsdp)."""
    return int(np.prod([sharding.axis_size(mesh, a) for a in sharding.BATCH_AXES]))


def pad_multiple(mesh: Mesh, layout: str) -> int:
    """Sequence-length multiple a batch needs on ``mesh``'s seq axis with ``layout``
    (``rl_ring.attention.layout.pad_multiple``)."""
    return layout_lib.pad_multiple(sharding.axis_size(mesh, sharding.SEQ), layout)


def host_share(mesh: Mesh, global_batch: int) -> HostShare:
    """This process's block of batch rows on ``mesh`` for a global batch of ``global_batch``.

    Raises:
        ValueError: the batch does not split evenly over the (data, fsdp) axes.
    """
    div = batch_divisor(mesh)
    if global_batch < 1 or global_batch % div:
        raise ValueError(
            f"batch_size={global_batch} must be a positive multiple of the data x fsdp mesh size "
            f"{div} (mesh {dict(mesh.shape)})"
        )
    # Only the batch axis matters here: a seq length equal to the seq axis size is enough.
    sh = sharding.batch_sharding(mesh, 2)
    idx = sh.addressable_devices_indices_map(
        (global_batch, sharding.axis_size(mesh, sharding.SEQ))
    )
    starts = sorted({s[0].indices(global_batch)[0] for s in idx.values()})
    stops = sorted({s[0].indices(global_batch)[1] for s in idx.values()})
    row_start, row_stop = starts[0], stops[-1]
    rows = row_stop - row_start
    if global_batch % rows:
        raise ValueError(
            f"this process holds rows [{row_start}, {row_stop}) of a batch of {global_batch}; "
            "the rows of one process must be one block that divides the batch"
        )
    return HostShare(row_start, rows, row_start // rows, global_batch // rows)


class MeshLoader:
    """Places host-local TokenBatches on a mesh as global arrays.

    Args:
        mesh: the training mesh.
        global_batch: rows of the global batch (over all processes).
        layout: token order on the seq axis (``contiguous``, ``zigzag`` or ``striped``).
    """

    def __init__(self, mesh: Mesh, global_batch: int, layout: str = "contiguous"):
        pad_multiple(mesh, layout)  # validates the layout name
        self.mesh = mesh
        self.global_batch = global_batch
        self.layout = layout
        self.share = host_share(mesh, global_batch)
        self.seq_shards = sharding.axis_size(mesh, sharding.SEQ)
        self._seq_len: int | None = None

    def sharding(self, ndim: int) -> NamedSharding:
        return sharding.batch_sharding(self.mesh, ndim)

    def check(self, batch: TokenBatch) -> None:
        """Validates a host batch's shape against the mesh; ValueError naming the mismatch."""
        batch.validate()
        rows, seq_len = batch.shape
        if rows != self.share.rows:
            raise ValueError(
                f"sampler returned {rows} rows; this process feeds {self.share.rows} rows of the "
                f"global batch of {self.global_batch}"
            )
        self.check_seq_len(seq_len)

    def check_seq_len(self, seq_len: int) -> None:
        """ValueError unless ``seq_len`` splits over the seq axis in this layout."""
        need = pad_multiple(self.mesh, self.layout)
        if seq_len % need:
            raise ValueError(
                f"sequence length {seq_len} is not divisible by {need} (seq mesh axis of "
                f"{self.seq_shards} devices, layout {self.layout!r}); pad the sampler's sequences "
                f"to a multiple of {need}"
            )
        if self._seq_len is None:
            self._seq_len = seq_len
        elif seq_len != self._seq_len:
            raise ValueError(
                f"sampler changed the sequence length from {self._seq_len} to {seq_len}; every "
                "batch of a run must have the same length (a new length recompiles the step)"
            )

    def permute(self, batch: TokenBatch) -> TokenBatch:
        """Applies the attention layout's token permutation to every per-token field."""
        if self.layout == "contiguous" or self.seq_shards == 1:
            return batch
        return batch.map_tokens(
            lambda x: np.asarray(layout_lib.permute(x, self.seq_shards, self.layout, axis=1))
        )

    def place(self, batch: TokenBatch) -> dict[str, jax.Array]:
        """The batch's per-token fields as global arrays sharded over the mesh."""
        self.check(batch)
        batch = self.permute(batch)
        out = {}
        r0 = self.share.row_start
        for f in TOKEN_FIELDS:
            local = np.asarray(getattr(batch, f), dtype=FIELD_DTYPES[f])
            shape = (self.global_batch, *local.shape[1:])

            def cb(index, local=local):
                rows = index[0].indices(self.global_batch)
                return local[(slice(rows[0] - r0, rows[1] - r0), *index[1:])]

            out[f] = jax.make_array_from_callback(shape, self.sharding(local.ndim), cb)
        return out

    def abstract(self, example: TokenBatch | dict[str, tuple[int, ...]]) -> dict:
        """ShapeDtypeStructs with shardings for a global batch shaped like ``example``."""
        if isinstance(example, TokenBatch):
            shapes = {f: (self.global_batch, *getattr(example, f).shape[1:]) for f in TOKEN_FIELDS}
        else:
            shapes = example
        return {
            f: jax.ShapeDtypeStruct(
                shapes[f], FIELD_DTYPES[f], sharding=self.sharding(len(shapes[f]))
            )
            for f in TOKEN_FIELDS
        }

    def shardings(self, example: TokenBatch | dict[str, tuple[int, ...]]) -> dict:
        return {f: a.sharding for f, a in self.abstract(example).items()}
