"""Fused (Pallas) attention kernels for one (query block, key block) pair, and their dispatch.

Two implementations of one interface (``pair_forward`` / ``pair_backward``, see
``triton.py``): :mod:`rl_ring.attention.kernels.triton` (GPU, Pallas Triton lowering) and
:mod:`rl_ring.attention.kernels.tpu` (Pallas Mosaic TPU). :func:`kernel_module` picks one by
backend, importing it lazily; on CPU the Triton kernels run in the Pallas interpreter (slow:
for tests). ``blockwise.py`` and ``ring.py`` call :func:`forward` / :func:`backward` when
``AttentionOptions.kernel`` resolves to ``"pallas"`` (:func:`resolve_kernel`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from rl_ring.attention.masks import TokenInfo
from rl_ring.attention.options import KERNELS

GPU_BACKENDS = ("gpu", "cuda", "rocm")


def _backend(backend: str | None) -> str:
    return jax.default_backend() if backend is None else backend


def resolve_kernel(kernel: str, backend: str | None = None) -> str:
    """``"xla"`` or ``"pallas"``: ``"auto"`` is pallas on GPU / TPU backends, xla on CPU."""
    if kernel not in KERNELS:
        raise ValueError(f"attention: kernel={kernel!r} is not one of {KERNELS}")
    if kernel != "auto":
        return kernel
    return "pallas" if _backend(backend) in (*GPU_BACKENDS, "tpu") else "xla"


def kernel_module(backend: str | None = None):
    """The kernel module for ``backend`` (default: JAX's default backend): ``triton`` on GPU
    and CPU (CPU only in interpret mode), ``tpu`` on TPU."""
    backend = _backend(backend)
    if backend == "tpu":
        from rl_ring.attention.kernels import tpu

        return tpu
    if backend in (*GPU_BACKENDS, "cpu"):
        from rl_ring.attention.kernels import triton

        return triton
    raise ValueError(f"attention: no Pallas attention kernel for backend {backend!r}")


@dataclass(frozen=True)
class KernelSpec:
    """Static description of a fused-kernel call (hashable: a custom_vjp static argument)."""

    causal: bool
    tokens_per_step: int
    scale: float
    backend: str
    """Backend whose kernel runs (``"cpu"``: the Triton kernel, interpreted)."""
    interpret: bool
    block_q: int | None = None
    block_k: int | None = None
    axis_name: str | None = None
    """Ring axis (ring.py only)."""
    axis_size: int = 1
    """Devices on the ring axis (ring.py only)."""

    @property
    def kwargs(self) -> dict:
        return dict(
            causal=self.causal, tokens_per_step=self.tokens_per_step, scale=self.scale,
            block_q=self.block_q, block_k=self.block_k, interpret=self.interpret,
        )


def kernel_spec(q, *, causal, tokens_per_step, options, **ring) -> KernelSpec:
    """KernelSpec of a call from its :class:`~rl_ring.attention.options.AttentionOptions`
    (``interpret`` None means: interpret when the backend is CPU)."""
    platform = jax.default_backend()
    backend = options.kernel_platform or platform
    interpret = options.interpret if options.interpret is not None else platform == "cpu"
    d = q.shape[-1]
    scale = float(options.scale if options.scale is not None else d**-0.5)
    return KernelSpec(
        causal=bool(causal), tokens_per_step=int(tokens_per_step), scale=scale,
        backend=backend, interpret=bool(interpret), block_q=options.block_q,
        block_k=options.block_k, **ring,
    )


def forward(spec: KernelSpec, q, k, v, q_info: TokenInfo, k_info: TokenInfo):
    """``pair_forward`` of the spec's backend: ``(out [b,h,tq,d] f32, lse [b,h,tq] f32)``."""
    return kernel_module(spec.backend).pair_forward(
        q, k, v, q_info.pos, k_info.pos, q_info.seg, k_info.seg, k_info.valid, **spec.kwargs
    )


def backward(spec: KernelSpec, q, k, v, do, lse, delta, q_info: TokenInfo, k_info: TokenInfo):
    """``pair_backward`` of the spec's backend: ``(dq, dk, dv)`` float32."""
    return kernel_module(spec.backend).pair_backward(
        q, k, v, do, lse, delta, q_info.pos, k_info.pos, q_info.seg, k_info.seg, k_info.valid,
        **spec.kwargs,
    )


def interpreted(options) -> bool:
    """Whether ``options`` run the fused kernels in the Pallas interpreter (kernel resolving
    to ``"pallas"`` and ``interpret`` set, or left None on a CPU backend)."""
    if resolve_kernel(options.kernel) != "pallas":
        return False
    return options.interpret if options.interpret is not None else _backend(None) == "cpu"


def check_interpretable(spec: KernelSpec, q, who: str) -> None:
    """Raises when an interpreted kernel would run on operands that vary over mesh axes.

    JAX's Pallas interpreter fails on indexing inside a kernel whose operands carry a
    varying-manual-axes type (``shard_map(check_vma=True)``); compiled GPU/TPU kernels are
    unaffected. ``attention(...)`` builds its ``shard_map`` with ``check_vma=False`` when it
    interprets kernels; a caller's own ``shard_map`` must do the same.
    """
    if not spec.interpret:
        return
    aval = jax.typeof(q)
    mat = getattr(aval, "manual_axis_type", None)
    varying = mat.varying if mat is not None else getattr(aval, "vma", ())
    if varying:
        raise ValueError(
            f"{who}(kernel='pallas') in interpret mode needs shard_map(check_vma=False): "
            "JAX's Pallas interpreter fails on indexing inside a kernel whose operands vary "
            "over mesh axes (the compiled GPU/TPU kernels are unaffected). Use kernel='xla' "
            f"on CPU, or call {who} in your own shard_map with check_vma=False."
        )


def heads_first(x: jnp.ndarray) -> jnp.ndarray:
    """``[b, t, h, d]`` -> ``[b, h, t, d]`` (the kernels' layout); its own inverse."""
    return jnp.swapaxes(x, 1, 2)


__all__ = [
    "GPU_BACKENDS",
    "KERNELS",
    "KernelSpec",
    "backward",
    "check_interpretable",
    "forward",
    "heads_first",
    "interpreted",
    "kernel_module",
    "kernel_spec",
    "resolve_kernel",
]
