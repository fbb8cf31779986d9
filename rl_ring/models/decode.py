"""KV-cached decoding with the trajectory transformer.

The cache (:class:`KVCache`) holds, for every layer, the rotated keys and the values of each
row's context in a preallocated, fixed-shape buffer; a per-row fill counter and per-slot
global positions mark the valid part. Two pure functions work on it inside ``jit``:

- :func:`prefill` runs the ordinary forward pass (the configured attention: reference,
  blockwise or ring) over whole ``[B, capacity]`` contexts and stores their keys/values in
  the rows it is told to (re)fill; :func:`prefill_rows` runs it over the refilled rows alone
  and scatters them into the cache;
- :func:`decode` embeds ``m`` new tokens per row, writes their keys/values into the next
  free slots and attends them to the cache (``rl_ring.attention.decode``), rows advancing
  independently (``num_new`` real tokens per row, 0 for an idle row).

Both give the predictions a full forward pass over the same context gives, to float
tolerance (tested for every agent, on one device and on a sequence-sharded cache).
:class:`Decoder` owns a cache and the two compiled functions for one ``(batch, m,
capacity)``: the cache buffers are donated, so each step updates them in place and nothing
recompiles as contexts grow. The cache never drops tokens: a step that would write past
the capacity raises ``ValueError``; a policy that wants a sliding window drops whole steps
itself and refills the row (``agents.policy.CachedPolicy``).

A row's context is one unpacked sequence (no segment ids): that is how evaluation builds it.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from rl_ring.attention.decode import (
    DecodeOptions,
    cache_specs,
    check_cache_shape,
    decode_attention,
    new_slots,
    sharded_write_positions,
)
from rl_ring.models.layers import LayerContext, constrain
from rl_ring.models.transformer import TrajectoryTransformer, check_tokens
from rl_ring.sharding import batch_shards

DECODE_FIELDS = ("kind", "values", "positions", "timesteps")


class KVCache(NamedTuple):
    """Keys and values of every layer for ``batch`` rows of ``capacity`` slots.

    Attributes:
        k: ``[depth, batch, kv_heads, capacity, head_dim]`` rotated keys.
        v: ``[depth, batch, kv_heads, capacity, head_dim]`` values.
        positions: ``[batch, capacity]`` int32 global position of the token in each slot.
        length: ``[batch]`` int32 filled slots per row (slots ``0 .. length-1`` are valid).
    """

    k: jax.Array
    v: jax.Array
    positions: jax.Array
    length: jax.Array

    @property
    def capacity(self) -> int:
        return int(self.k.shape[3])

    @property
    def batch(self) -> int:
        return int(self.k.shape[1])


def cache_shardings(mesh) -> KVCache:
    """NamedShardings of the cache on ``mesh``: rows over the batch axes, slots over ``seq``."""
    specs = cache_specs(mesh)
    return KVCache(
        NamedSharding(mesh, specs["kv"]),
        NamedSharding(mesh, specs["kv"]),
        NamedSharding(mesh, specs["positions"]),
        NamedSharding(mesh, specs["length"]),
    )


def init_cache(model_or_cfg, batch: int, capacity: int, *, mesh=None, dtype=None) -> KVCache:
    """An empty cache for ``batch`` rows of ``capacity`` slots.

    Args:
        model_or_cfg: the model or its :class:`~rl_ring.models.ModelConfig`.
        batch: rows (evaluation environments).
        capacity: slots (tokens) per row.
        mesh: shard rows over the mesh's batch axes and slots over its ``seq`` axis.
        dtype: dtype of keys and values (default: the model's compute dtype).

    Raises:
        ValueError: a non-positive size, or sizes the mesh does not divide.
    """
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    for name, value in (("batch", batch), ("capacity", capacity)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"init_cache: {name} must be a positive int, got {value!r}")
    check_cache_shape(int(capacity), int(batch), mesh)
    dtype = cfg.compute_dtype if dtype is None else jnp.dtype(dtype)
    shape = (cfg.depth, int(batch), cfg.kv_heads, int(capacity), cfg.head_dim)

    def build():
        return KVCache(
            jnp.zeros(shape, dtype),
            jnp.zeros(shape, dtype),
            jnp.zeros((batch, capacity), jnp.int32),
            jnp.zeros((batch,), jnp.int32),
        )

    if mesh is None:
        return build()
    # Built in place, sharded: no device ever holds the whole cache.
    return jax.jit(build, out_shardings=cache_shardings(mesh))()


def _decode_options(cfg, options: DecodeOptions | None) -> DecodeOptions:
    if options is not None:
        return options
    scale = dict(cfg.attn_options).get("scale")
    return DecodeOptions(scale=scale)


def _replicated_over_seq(x, mesh):
    """Pins new-token activations ``[batch, m, ...]`` to the batch axes (copies on ``seq``)."""
    if mesh is None:
        return x
    batch = cache_specs(mesh)["length"]
    spec = PartitionSpec(*batch, *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def decode(
    model: TrajectoryTransformer,
    tokens: dict[str, jax.Array],
    cache: KVCache,
    num_new: jax.Array,
    *,
    mesh=None,
    options: DecodeOptions | None = None,
) -> tuple[jax.Array, KVCache]:
    """Appends up to ``m`` new tokens per row to the cache and predicts at each of them.

    Args:
        model: the trajectory transformer.
        tokens: ``kind``, ``values``, ``positions`` (global, per row), ``timesteps`` of the
            new tokens as ``[B, m, ...]`` arrays; the first ``num_new[b]`` of row ``b`` are
            real and must follow the row's cached tokens.
        cache: the cache (pass it donated).
        num_new: ``[B]`` int, real new tokens per row (0: the row is idle and unchanged).
        mesh: the mesh the cache is sharded over (as in :func:`init_cache`).
        options: cached-attention options (default: the model's softmax scale).

    Returns:
        ``(pred [B, m, out_dim] float32, cache)``; predictions at padding tokens and idle
        rows are meaningless.
    """
    cfg = model.cfg
    opts = _decode_options(cfg, options)
    kind = jnp.asarray(tokens["kind"]).astype(jnp.int32)
    positions = jnp.asarray(tokens["positions"]).astype(jnp.int32)
    m = kind.shape[1]
    slots, write, new_length = new_slots(cache.length, jnp.asarray(num_new), m)
    cache_pos = sharded_write_positions(cache.positions, positions, slots, write, mesh=mesh)

    x = model.embed(kind, jnp.asarray(tokens["values"]), jnp.asarray(tokens["timesteps"]))
    x = _replicated_over_seq(x, mesh)

    def layer(block, carry, index):
        x, ck, cv = carry
        q, k, v = block.attn.project(block.attn_norm(x), positions)
        o, ck, cv = decode_attention(
            q, k, v, positions, ck, cv, cache_pos, slots, write, new_length,
            layer=index, mesh=mesh, options=opts,
        )
        x = _replicated_over_seq(x + block.attn.output(o), mesh)
        # The per-token FFN needs no chunking for m new tokens.
        x = _replicated_over_seq(x + block.ffn(block.ffn_norm(x), blockwise=False), mesh)
        return x, ck, cv

    x, ck, cv = nnx.scan(layer, in_axes=(0, nnx.Carry, 0), out_axes=nnx.Carry)(
        model.blocks, (x, cache.k, cache.v), jnp.arange(cfg.depth, dtype=jnp.int32)
    )
    pred = model.predict(model.final_norm(x))
    return pred, KVCache(ck, cv, cache_pos, new_length)


def _forward_kv(model: TrajectoryTransformer, tokens: dict[str, jax.Array], *, mesh=None):
    """The forward pass over whole contexts: ``(pred [B, T, out_dim], keys [L, B, T, Hk, D],
    values, positions [B, T], valid [B, T])``."""
    cfg = model.cfg
    check_tokens(tokens, cfg, mesh)
    positions = jnp.asarray(tokens["positions"]).astype(jnp.int32)
    valid = jnp.asarray(tokens["valid"]).astype(bool)
    ctx = LayerContext(
        positions=positions, segment_ids=None, kv_mask=valid, mesh=mesh, deterministic=True
    )
    kind = jnp.asarray(tokens["kind"]).astype(jnp.int32)
    x = model.embed(kind, jnp.asarray(tokens["values"]), jnp.asarray(tokens["timesteps"]))
    x = constrain(x, mesh)

    def layer(block, x):
        q, k, v = block.attn.project(block.attn_norm(x), ctx.positions)
        o = block.attn.attend(q, k, v, ctx)
        x = constrain(x + block.attn.output(o), mesh)
        x = constrain(x + block.ffn(block.ffn_norm(x), mesh=mesh), mesh)
        return x, (k, v)

    x, (ks, vs) = nnx.scan(layer, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0))(
        model.blocks, x
    )
    return model.predict(model.final_norm(x)), ks, vs, positions, valid


def prefill(
    model: TrajectoryTransformer,
    tokens: dict[str, jax.Array],
    cache: KVCache,
    rows: jax.Array,
    *,
    mesh=None,
) -> tuple[jax.Array, KVCache]:
    """Refills the cache rows in ``rows`` from whole contexts with one forward pass.

    The forward pass runs over every row (its cost does not depend on ``rows``); to refill
    a few rows of a large batch, :func:`prefill_rows` runs it over those rows alone.

    Args:
        model: the trajectory transformer (its configured attention runs the forward).
        tokens: ``kind``, ``values``, ``positions``, ``timesteps`` and ``valid`` as
            ``[B, capacity, ...]`` arrays: each row's context in slot order, its real tokens
            a prefix (``valid`` True) and padding after them.
        cache: the cache (pass it donated).
        rows: ``[B]`` bool, the rows to refill; the other rows keep their cache.
        mesh: the mesh (as in :func:`init_cache`; the forward pass runs sharded on it).

    Returns:
        ``(pred [B, capacity, out_dim] float32, cache)``: the forward pass's predictions and
        the cache with the refilled rows' keys, values, positions and lengths.
    """
    rows = jnp.asarray(rows).astype(bool)
    batch = rows.shape[0]
    # Row b's context goes to cache row b where it is refilled, past the batch (nowhere)
    # elsewhere.
    index = jnp.where(rows, jnp.arange(batch, dtype=jnp.int32), batch)
    return prefill_rows(model, tokens, cache, index, mesh=mesh)


def prefill_rows(
    model: TrajectoryTransformer,
    tokens: dict[str, jax.Array],
    cache: KVCache,
    row_index: jax.Array,
    *,
    mesh=None,
) -> tuple[jax.Array, KVCache]:
    """Refills the cache rows ``row_index`` from ``b`` whole contexts, the forward pass
    running over those ``b`` rows only (:func:`prefill` runs it over the whole batch).

    A sliding-window policy refills a handful of its rows at a time (those whose context
    just slid); over a large batch, a forward pass over every row costs ``batch / b`` times
    this one for the same cache.

    Args:
        model: the trajectory transformer.
        tokens: as :func:`prefill`'s, ``[b, capacity, ...]``: row ``j`` is the context of
            cache row ``row_index[j]``.
        cache: the cache of ``B`` rows (pass it donated).
        row_index: ``[b]`` int32 cache row of each context; entries ``>= B`` are padding
            (their contexts are computed and nothing is written).
        mesh: the mesh (as in :func:`prefill`; ``b`` a multiple of its batch shards).

    Returns:
        ``(pred [b, capacity, out_dim] float32, cache)``.
    """
    pred, ks, vs, positions, valid = _forward_kv(model, tokens, mesh=mesh)
    index = jnp.asarray(row_index, jnp.int32)

    def store(new_lbthd, old):
        new = jnp.swapaxes(new_lbthd, 2, 3).astype(old.dtype)  # [L, b, Hk, T, D]
        out = old.at[:, index].set(new, mode="drop")
        if mesh is not None:
            out = jax.lax.with_sharding_constraint(out, cache_shardings(mesh).k)
        return out

    new_cache = KVCache(
        store(ks, cache.k),
        store(vs, cache.v),
        cache.positions.at[index].set(positions, mode="drop"),
        cache.length.at[index].set(valid.sum(-1).astype(jnp.int32), mode="drop"),
    )
    return pred, new_cache


# ----------------------------------------------------------------------------------------
# Host side: one cache, its compiled steps and the checks that need concrete values.
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _compiled(graphdef, mesh, options):
    """The jitted decode and prefill steps of one model structure, mesh and options, and
    their trace counters (shared by every :class:`Decoder` of that key)."""
    traces = {"decode": 0, "prefill": 0}
    # The cache keeps the shardings init_cache gave it, so the next call's input matches
    # the first call's and hits the same compiled function.
    out = {}
    if mesh is not None:
        out["out_shardings"] = (NamedSharding(mesh, PartitionSpec()), cache_shardings(mesh))

    @functools.partial(jax.jit, donate_argnums=(1,), **out)
    def step(state, cache, tokens, num_new):
        traces["decode"] += 1  # runs only while tracing: counts compilations
        model = nnx.merge(graphdef, state)
        return decode(model, tokens, cache, num_new, mesh=mesh, options=options)

    @functools.partial(jax.jit, donate_argnums=(1,), **out)
    def refill(state, cache, tokens, row_index):
        traces["prefill"] += 1
        model = nnx.merge(graphdef, state)
        pred, cache = prefill_rows(model, tokens, cache, row_index, mesh=mesh)
        last = jnp.maximum(jnp.asarray(tokens["valid"]).sum(-1) - 1, 0)
        return jnp.take_along_axis(pred, last[:, None, None], axis=1)[:, 0], cache

    return step, refill, traces


def refill_bucket(rows: int, batch: int, multiple: int = 1) -> int:
    """Rows one compiled refill runs for ``rows`` rows to refill out of ``batch``: the next
    power of two (a multiple of ``multiple``, the mesh's batch shards), at most ``batch``.
    A decoder therefore compiles its refill at most ``log2(batch) + 2`` times."""
    b = 1 << max(0, int(rows) - 1).bit_length()
    b = -(-b // multiple) * multiple
    return min(b, int(batch))


class Decoder:
    """A model's KV cache for ``batch`` rows and its compiled decode and prefill steps.

    One compiled decode function per ``(batch, m)`` (``m`` new tokens per call) and one
    refill per bucket of refilled rows (:func:`refill_bucket`); the cache is donated to
    both, so it is updated in place. The host keeps each row's fill level, so overflow and
    shape errors are raised before anything runs.

    Args:
        model: the trajectory transformer (its parameters are captured now).
        batch: rows.
        capacity: slots per row.
        mesh: shard the cache (rows over the batch axes, slots over ``seq``); parameters are
            replicated.
        options: cached-attention options.
    """

    def __init__(
        self,
        model: TrajectoryTransformer,
        batch: int,
        capacity: int,
        *,
        mesh=None,
        options: DecodeOptions | None = None,
    ):
        self.cfg = model.cfg
        self.batch, self.capacity, self.mesh = int(batch), int(capacity), mesh
        check_cache_shape(self.capacity, self.batch, mesh)
        graphdef, state = nnx.split(model)
        if mesh is not None:
            state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))
        self._state = state
        self._step, self._refill, self._traces = _compiled(graphdef, mesh, options)
        self._traces_at_start = dict(self._traces)
        self.reset()

    def reset(self) -> None:
        """Empties every row."""
        self.cache = init_cache(self.cfg, self.batch, self.capacity, mesh=self.mesh)
        self.lengths = np.zeros(self.batch, np.int64)

    def step(self, tokens: dict[str, np.ndarray], num_new: np.ndarray) -> jax.Array:
        """Appends ``num_new[b]`` new tokens to row ``b`` and predicts at every new token.

        Args:
            tokens: ``kind``, ``values``, ``positions``, ``timesteps`` as ``[batch, m, ...]``.
            num_new: ``[batch]`` real tokens per row (``0 .. m``).

        Returns:
            ``[batch, m, out_dim]`` predictions (a device array).

        Raises:
            ValueError: a missing field, wrong shapes, ``num_new`` out of range, or a row
                whose cache would overflow.
        """
        m = self._check_step(tokens, num_new)
        num_new = np.asarray(num_new, np.int64)
        args = {f: np.asarray(tokens[f]) for f in DECODE_FIELDS}
        del m
        pred, self.cache = self._step(self._state, self.cache, args,
                                      num_new.astype(np.int32))
        self.lengths += num_new
        return pred

    def prefill(self, tokens: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """Refills ``rows`` from whole contexts; returns ``[batch, out_dim]`` float32, the
        prediction at each refilled row's last real token (0 in the other rows). The forward
        pass runs over the refilled rows alone (:func:`prefill_rows`, padded to
        :func:`refill_bucket` rows).

        Raises:
            ValueError: wrong shapes, or real tokens that are not a prefix of a row.
        """
        rows = np.asarray(rows, bool)
        if rows.shape != (self.batch,):
            raise ValueError(f"Decoder.prefill: rows has shape {rows.shape}, expected "
                             f"({self.batch},)")
        valid = np.asarray(tokens.get("valid"), bool) if "valid" in tokens else None
        if valid is None or valid.shape != (self.batch, self.capacity):
            raise ValueError(
                f"Decoder.prefill: tokens['valid'] must be [batch, capacity] = "
                f"{(self.batch, self.capacity)}, got "
                f"{None if valid is None else valid.shape}"
            )
        fill = valid.sum(-1)
        prefix = np.arange(self.capacity)[None, :] < fill[:, None]
        bad = np.flatnonzero(rows & (prefix != valid).any(-1))
        if bad.size:
            raise ValueError(
                f"Decoder.prefill: the real tokens (valid) of rows {bad.tolist()} are not a "
                "prefix of the row; a cached context is contiguous from slot 0"
            )
        args = {f: np.asarray(tokens[f]) for f in (*DECODE_FIELDS, "valid")}
        for f in DECODE_FIELDS:
            if args[f].shape[:2] != (self.batch, self.capacity):
                raise ValueError(
                    f"Decoder.prefill: tokens[{f!r}] has shape {args[f].shape}, expected "
                    f"[batch, capacity, ...] = {(self.batch, self.capacity)}"
                )
        idx = np.flatnonzero(rows)
        last = np.zeros((self.batch, self.cfg.out_dim), np.float32)
        if idx.size == 0:
            return last
        # The forward pass runs over the refilled rows alone (padded to a bucket size, the
        # padding rows' index past the batch so nothing is written for them).
        b = refill_bucket(idx.size, self.batch, batch_shards(self.mesh))
        take = np.concatenate([idx, np.full(b - idx.size, idx[0])])
        index = np.concatenate([idx, np.full(b - idx.size, self.batch)]).astype(np.int32)
        sub = {f: a[take] for f, a in args.items()}
        out, self.cache = self._refill(self._state, self.cache, sub, index)
        last[idx] = np.asarray(out)[: idx.size]
        self.lengths[rows] = fill[rows]
        return last

    @property
    def compilations(self) -> dict[str, int]:
        """Traces (compilations) of the decode and prefill functions since this decoder was
        made. Decoders of equal models and options share their compiled functions, so a
        second decoder of the same shapes compiles nothing."""
        return {k: v - self._traces_at_start[k] for k, v in self._traces.items()}

    def _check_step(self, tokens, num_new) -> int:
        missing = [f for f in DECODE_FIELDS if f not in tokens]
        if missing:
            raise ValueError(
                f"Decoder.step: tokens are missing fields {missing}; expected {DECODE_FIELDS}"
            )
        shape = np.shape(tokens["kind"])
        if len(shape) != 2 or shape[0] != self.batch:
            raise ValueError(
                f"Decoder.step: tokens['kind'] must be [batch={self.batch}, m], got {shape}"
            )
        m = shape[1]
        for f in ("positions", "timesteps"):
            if np.shape(tokens[f]) != shape:
                raise ValueError(
                    f"Decoder.step: tokens[{f!r}] has shape {np.shape(tokens[f])}, expected "
                    f"{shape} like tokens['kind']"
                )
        vshape = np.shape(tokens["values"])
        if len(vshape) != 3 or vshape[:2] != shape:
            raise ValueError(
                f"Decoder.step: tokens['values'] has shape {vshape}, expected "
                f"({shape[0]}, {m}, F)"
            )
        num_new = np.asarray(num_new)
        if num_new.shape != (self.batch,):
            raise ValueError(
                f"Decoder.step: num_new has shape {num_new.shape}, expected ({self.batch},)"
            )
        if (num_new < 0).any() or (num_new > m).any():
            raise ValueError(
                f"Decoder.step: num_new must lie in [0, {m}] (m = tokens per call), got "
                f"{num_new.tolist()}"
            )
        over = np.flatnonzero(self.lengths + num_new > self.capacity)
        if over.size:
            i = int(over[0])
            raise ValueError(
                f"Decoder.step: KV cache overflow in rows {over.tolist()}: row {i} holds "
                f"{int(self.lengths[i])} of {self.capacity} slots and would add "
                f"{int(num_new[i])}; the cache never drops tokens (slide whole steps out and "
                "prefill the row, as agents.policy.CachedPolicy does, or use a larger capacity)"
            )
        return m
