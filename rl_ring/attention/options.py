"""Options shared by the attention kernels, and the checks every entry point runs."""

from __future__ import annotations

from dataclasses import dataclass

from rl_ring.sharding import SEQ

KERNELS = ("xla", "pallas", "auto")
"""Values of :attr:`AttentionOptions.kernel`."""


@dataclass(frozen=True)
class AttentionOptions:
    """Tuning knobs of the blockwise and ring kernels (semantics are keyword arguments)."""

    q_chunk: int | None = None
    """Query tokens per chunk (None: the block split evenly into chunks of at most
    :func:`default_chunk`); clamped to the local block, a ragged last chunk is padded."""
    k_chunk: int | None = None
    """Key tokens per chunk (None: as ``q_chunk``); clamped to the local block, a ragged last
    chunk is padded."""
    scale: float | None = None
    """Softmax scale; None means ``head_dim ** -0.5``."""
    num_shards: int | None = None
    """Shard count that defines a non-contiguous layout's positions when there is no mesh."""
    axis_name: str = SEQ
    """Mesh axis the ring runs over (the sequence axis)."""
    skip_chunks: bool = True
    """Skip chunk pairs the mask hides entirely (False computes them: for comparisons only)."""
    overlap_grads: bool = True
    """Ring backward: overlap the dK/dV transfer with compute (False: 2 fewer f32 blocks)."""
    kernel: str = "xla"
    """Blockwise / ring attention per (query block, key block) pair: ``"xla"`` (chunk pairs
    in XLA, online softmax), ``"pallas"`` (fused Pallas kernels, ``attention.kernels``:
    Triton on GPU, Mosaic on TPU, the Triton kernels interpreted on CPU) or ``"auto"``
    (pallas on GPU / TPU backends, xla on CPU). With pallas the chunk options are unused."""
    interpret: bool | None = None
    """Pallas kernels in the interpreter (None: exactly when the backend is CPU)."""
    kernel_platform: str | None = None
    """Whose Pallas kernels run: ``"gpu"`` (Triton) or ``"tpu"`` (Mosaic); None: the
    backend's (Triton interpreted on CPU). ``"tpu"`` on a CPU runs the TPU kernels in the
    interpreter: how the tests check them inside the ring without a TPU."""
    block_q: int | None = None
    """Pallas kernel query tile (None: the kernel's default)."""
    block_k: int | None = None
    """Pallas kernel key tile (None: the kernel's default)."""

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(
                f"AttentionOptions.kernel must be one of {KERNELS}, got {self.kernel!r}"
            )
        if self.kernel_platform not in (None, "gpu", "tpu"):
            raise ValueError(
                "AttentionOptions.kernel_platform must be None, 'gpu' or 'tpu', got "
                f"{self.kernel_platform!r}"
            )
        for name in ("q_chunk", "k_chunk", "block_q", "block_k"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"AttentionOptions.{name} must be a positive int, got {value!r}")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"AttentionOptions.scale must be positive, got {self.scale!r}")
        if self.num_shards is not None and self.num_shards < 1:
            raise ValueError(f"AttentionOptions.num_shards must be >= 1, got {self.num_shards!r}")


# Chunk lengths measured best per backend (docs/attention.md): on CPU a 512 x 512 x heads
# score block stays near the caches; a GPU runs each chunk pair as a few kernel launches, so
# bigger chunks (fewer launches) win until the blocks no longer fit.
DEFAULT_CHUNK = {"cpu": 512}
DEFAULT_CHUNK_ACCELERATOR = 2048


def default_chunk(backend: str | None = None) -> int:
    """Default chunk length for ``backend`` (default: JAX's default backend, at call time)."""
    if backend is None:
        import jax

        backend = jax.default_backend()
    return DEFAULT_CHUNK.get(backend, DEFAULT_CHUNK_ACCELERATOR)


def even_chunk(length: int, max_chunk: int | None = None) -> int:
    """The chunk that splits ``length`` tokens into as few chunks of at most ``max_chunk``
    (default :func:`default_chunk`) as possible, with the least padding: 1200 -> 400, not
    512 + 512 + 176 padded to 512."""
    max_chunk = default_chunk() if max_chunk is None else max_chunk
    pieces = -(-length // max_chunk)
    return max(1, -(-length // pieces))


def with_chunk_cap(options: AttentionOptions, cap: int) -> AttentionOptions:
    """Options whose unset chunk lengths evenly split runs of ``cap`` tokens (set ones kept)."""
    import dataclasses

    q = options.q_chunk if options.q_chunk is not None else even_chunk(cap)
    k = options.k_chunk if options.k_chunk is not None else even_chunk(cap)
    return dataclasses.replace(options, q_chunk=q, k_chunk=k)


def resolve_options(options: AttentionOptions | None, overrides: dict) -> AttentionOptions:
    """``options`` (default AttentionOptions()) with keyword overrides applied.

    Raises:
        TypeError: an override that is not a field of AttentionOptions.
    """
    import dataclasses

    options = AttentionOptions() if options is None else options
    if not isinstance(options, AttentionOptions):
        raise TypeError(f"options must be an AttentionOptions, got {type(options).__name__}")
    if overrides:
        fields = {f.name for f in dataclasses.fields(AttentionOptions)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise TypeError(
                f"unknown attention option(s) {unknown}; AttentionOptions fields are "
                f"{sorted(fields)}"
            )
        options = dataclasses.replace(options, **overrides)
    return options


def check_qkv(q, k, v, *, segment_ids=None, positions=None, kv_mask=None, tokens_per_step=1):
    """Validates attention inputs; returns ``(batch, seq, heads, kv_heads, head_dim)``.

    Raises:
        ValueError: naming the argument and the shapes when ranks, shapes or head counts
            do not fit together.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(
                f"attention: {name} must be [batch, seq, heads, head_dim], got shape "
                f"{getattr(x, 'shape', type(x).__name__)}"
            )
    b, t, h, d = q.shape
    if k.shape != v.shape:
        raise ValueError(
            f"attention: k and v must have the same shape, got k {k.shape}, v {v.shape}"
        )
    kb, kt, hk, kd = k.shape
    if (kb, kt, kd) != (b, t, d):
        raise ValueError(
            f"attention: k/v {k.shape} must match q {q.shape} in batch, seq and head_dim"
        )
    if hk < 1 or h % hk != 0:
        raise ValueError(
            f"attention: q heads ({h}) must be a multiple of k/v heads ({hk}); q {q.shape}, "
            f"k {k.shape}"
        )
    for name, x in (("segment_ids", segment_ids), ("positions", positions), ("kv_mask", kv_mask)):
        if x is not None and tuple(x.shape) != (b, t):
            raise ValueError(
                f"attention: {name} must be [batch, seq] = {(b, t)} like q {q.shape}, got {x.shape}"
            )
    if not isinstance(tokens_per_step, int) or tokens_per_step < 1:
        raise ValueError(
            f"attention: tokens_per_step must be a positive int, got {tokens_per_step!r}"
        )
    return b, t, h, hk, d
