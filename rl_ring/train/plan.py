"""Compile a training step without running it and report per-device memory (``rl-ring plan``).

A :class:`StepShape` says what one training step computes (model, batch, sequence, mesh,
compute dtype); the named ones are in ``agents.presets``, the command in ``rl_ring.cli.plan``.

The step is lowered on abstract inputs (``jax.ShapeDtypeStruct`` carrying shardings), so no
parameter, optimiser state or batch is ever allocated; the compiled executable's
``memory_analysis()`` gives the per-device sizes. Meshes larger than the machine are
simulated with fake CPU devices (:func:`ensure_cpu_devices`, before JAX starts its backend).

Numbers are XLA:CPU's buffer assignment for the SPMD-partitioned step: the arguments and
outputs are exact per-device sizes; the temporary size (activations kept for the backward
pass and workspace) is the CPU compiler's and can differ from a GPU/TPU compiler's.

Beside the compiled numbers, :func:`attention_memory` estimates analytically what one
attention call (one layer, forward+backward) holds per device under each context-parallel
strategy (ring, allgather, ulysses) and single-device blockwise, so that a plan shows what
switching ``--impl`` would change before compiling it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from rl_ring.models import ModelConfig
from rl_ring.train.optim import OptimConfig


@dataclass(frozen=True)
class StepShape:
    """One training step's shape: model, batch, sequence, mesh."""

    name: str
    """Preset name."""
    agent: str
    """Agent whose token layout the sequence follows."""
    model: ModelConfig
    """The trajectory transformer."""
    batch_size: int
    """Global batch in sequences."""
    steps_per_sequence: int
    """Environment steps in one sequence (all trajectories of a chain together)."""
    tokens_per_step: int
    """Tokens per environment step in the agent's layout."""
    mesh: str
    """Default mesh spec."""
    compute_dtype: str = "float32"
    """Forward/backward compute dtype (parameters stay float32)."""
    description: str = ""
    """Where the numbers come from."""
    agent_options: tuple[tuple[str, Any], ...] = ()
    """Options of the agent's Config besides the model (e.g. chain length)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser settings of a training run from this preset."""
    steps: int = 1000
    """Training steps of a run from this preset."""
    target_dim: int | None = None
    """Width of ``TokenBatch.target`` (default: the model's action size)."""

    @property
    def seq_len(self) -> int:
        return self.steps_per_sequence * self.tokens_per_step

    @property
    def feature_dim(self) -> int:
        """Width of ``TokenBatch.values``: the widest token kind the model embeds."""
        return max(self.model.kind_features.values())

    def replace(self, **changes) -> StepShape:
        return dataclasses.replace(self, **changes)


@dataclass
class PlanReport:
    """Per-device bytes of one compiled training step, and what it was compiled for."""

    name: str
    mesh: str
    devices: int
    num_params: int
    seq_len: int
    batch_size: int
    compute_dtype: str
    attention: str
    params_bytes: int
    """Parameters held by one device (its shards)."""
    opt_state_bytes: int
    """Optimiser state held by one device."""
    other_state_bytes: int
    """Step counter, PRNG and non-parameter model variables."""
    batch_bytes: int
    """The device's share of the token batch."""
    argument_bytes: int
    """memory_analysis: all inputs of the step (state + batch)."""
    output_bytes: int
    """memory_analysis: all outputs (new state + metrics)."""
    alias_bytes: int
    """memory_analysis: outputs written in place of donated inputs."""
    temp_bytes: int
    """memory_analysis: temporaries, i.e. activations saved for the backward and workspace."""
    generated_code_bytes: int
    peak_bytes: int
    """Estimated peak: arguments + outputs - aliased + temporaries."""
    compile_s: float
    attention_memory: dict = field(default_factory=dict)
    """Analytic bytes of one attention call per device, per strategy
    (:func:`attention_memory`)."""

    def table(self) -> str:
        def row(label: str, n: int, note: str = "") -> str:
            return f"  {label:<22}{human_bytes(n):>12}  {note}".rstrip()

        lines = [
            f"plan {self.name}: {self.num_params / 1e6:.1f}M parameters, batch {self.batch_size} "
            f"x {self.seq_len:,} tokens, mesh {self.mesh} ({self.devices} devices), "
            f"{self.compute_dtype} compute, attention {self.attention}",
            "per device:",
            row("parameters", self.params_bytes),
            row("optimiser state", self.opt_state_bytes),
            row("other state", self.other_state_bytes, "(step, PRNG, non-parameter variables)"),
            row("batch", self.batch_bytes),
            row("arguments (total)", self.argument_bytes, "= the four above"),
            row("activations + temps", self.temp_bytes, "(XLA temporaries)"),
            row("outputs", self.output_bytes,
                f"({human_bytes(self.alias_bytes)} written into donated inputs)"),
            row("peak estimate", self.peak_bytes, "arguments + outputs - aliased + temps"),
            f"compiled in {self.compile_s:.1f} s",
        ]
        if self.attention_memory:
            lines.append("attention, one layer, per device (analytic, fwd / fwd+bwd):")
            for impl, m in self.attention_memory.items():
                note = "  (" + m["note"] + ")" if m.get("note") else ""
                if m["fwd"] is None:
                    lines.append(f"  {impl:<22}{'-':>12}{note}")
                    continue
                lines.append(f"  {impl:<22}{human_bytes(m['fwd']):>12} / "
                             f"{human_bytes(m['fwd_bwd'])}{note}")
        return "\n".join(lines)


def attention_memory(
    *,
    seq_len: int,
    num_devices: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    batch: int = 1,
    dtype_bytes: int = 4,
    chunk: int = 512,
) -> dict[str, dict]:
    """Per-device bytes of one attention call (forward, and forward+backward) per strategy.

    The dominant buffers, element counts x bytes (``B`` the input dtype's, 4 for the float32
    accumulators), with ``L = seq_len / num_devices`` the local block, ``h``/``hk`` the
    heads a device holds (after any tensor split; pass those), ``b`` the per-device batch:

    - every strategy: its q and output ``2 b Lq h' d B``, k and v ``2 b Lk hk' d B`` for
      the tokens ``Lq``/``Lk`` and heads ``h'``/``hk'`` it computes on, the log-sum-exp
      ``b h' Lq 4`` and one chunk pair's float32 scores ``b h' c^2 4`` (chunk ``c``, at
      most the block); the backward adds the output cotangent ``b Lq h' d B``, float32
      dq ``b Lq h' d 4`` and dK/dV ``2 b Lk hk' d 4``;
    - ``blockwise`` (one device): ``Lq = Lk = T``;
    - ``ring``: ``Lq = Lk = L``, plus the K/V block in flight ``2 b L hk d B``; backward:
      the travelling dK/dV and the received copy (``overlap_grads``), ``2 x 2 b L hk d 4``;
    - ``allgather``: ``Lq = L``, the gathered K/V ``2 b T hk d B``; backward: float32
      dK/dV of the whole sequence ``2 b T hk d 4`` before the reduce-scatter;
    - ``ulysses``: the local q/k/v/out ``b L (2h + 2hk) d B`` and their head-split copies
      over the whole sequence, ``Lq = Lk = T`` on ``h/n`` and ``hk r/n`` heads (``r`` the
      K/V repeats when ``n`` does not divide ``hk``); ``None`` entries when ``n`` does not
      divide ``h``.

    Args:
        seq_len: tokens T of the whole sequence.
        num_devices: devices n on the sequence axis.
        heads, kv_heads: query and K/V heads per device (after a tensor-axis split).
        head_dim: head dimension d.
        batch: sequences per device (the batch over the data axes).
        dtype_bytes: bytes per element of q/k/v (4 float32, 2 bfloat16).
        chunk: query/key chunk length of the kernels.

    Returns:
        ``{impl: {"fwd": bytes, "fwd_bwd": bytes, "terms": {name: bytes}}}`` for
        ``blockwise`` (the whole sequence on one device), ``ring``, ``allgather`` and
        ``ulysses``.
    """
    import math

    t, n, b, d, B, F = seq_len, num_devices, batch, head_dim, dtype_bytes, 4
    if t % n:
        raise ValueError(f"attention_memory: seq_len {t} is not divisible by {n} devices")
    L = t // n

    def kernel(lq: int, lk: int, h: int, hk: int) -> tuple[dict, dict]:
        c = min(chunk, lq, lk)
        fwd = {"q+out": 2 * b * lq * h * d * B, "k+v": 2 * b * lk * hk * d * B,
               "lse": b * h * lq * F, "scores": b * h * c * c * F}
        bwd = {"d_out": b * lq * h * d * B, "dq_f32": b * lq * h * d * F,
               "dkv_f32": 2 * b * lk * hk * d * F}
        return fwd, bwd

    def entry(fwd: dict, bwd: dict, note: str = "") -> dict:
        terms = {**fwd, **{f"bwd:{k}": v for k, v in bwd.items()}}
        return {"fwd": sum(fwd.values()), "fwd_bwd": sum(terms.values()), "terms": terms,
                "note": note}

    out = {"blockwise": entry(*kernel(t, t, heads, kv_heads), "whole sequence, one device")}
    fwd, bwd = kernel(L, L, heads, kv_heads)
    out["ring"] = entry({**fwd, "kv_in_flight": 2 * b * L * kv_heads * d * B},
                        {**bwd, "dkv_travelling_f32": 2 * 2 * b * L * kv_heads * d * F})
    fwd, bwd = kernel(L, L, heads, kv_heads)
    out["allgather"] = entry({**fwd, "kv_gathered": 2 * b * t * kv_heads * d * B},
                             {**bwd, "dkv_gathered_f32": 2 * b * t * kv_heads * d * F})
    if heads % n == 0:
        r = n // math.gcd(kv_heads, n)
        fwd, bwd = kernel(t, t, heads // n, kv_heads * r // n)
        local = b * L * (2 * heads + 2 * kv_heads) * d * B
        out["ulysses"] = entry({**fwd, "local_qkvo": local}, bwd,
                               f"K/V heads repeated {r}x" if r > 1 else "")
    else:
        out["ulysses"] = {"fwd": None, "fwd_bwd": None, "terms": {},
                          "note": f"{heads} heads not divisible by {n} devices"}
    return out


def human_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps the number >= 1."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def plan_step(shape, mesh_spec: str | None = None, *, optim=None, loss_fn=None) -> PlanReport:
    """Compiles ``shape``'s training step on ``mesh_spec`` and measures it.

    Args:
        shape: a :class:`StepShape`.
        mesh_spec: mesh spec (default ``shape.mesh``); uses the first devices of the process.
        optim: :class:`~rl_ring.train.optim.OptimConfig` (default AdamW settings).
        loss_fn: ``loss_fn(model, tokens, *, mesh, rngs)`` (default: the model's action loss).

    Raises:
        ValueError: the mesh needs more devices than the process has, or a shape error.
    """
    import jax
    from flax import nnx

    from rl_ring import sharding
    from rl_ring.models import TrajectoryTransformer
    from rl_ring.train.loader import MeshLoader
    from rl_ring.train.optim import make_optimizer
    from rl_ring.train.recipe import model_loss, rule_specs
    from rl_ring.train.state import build_state, tree_bytes
    from rl_ring.train.step import jit_step, make_step_fn

    spec = sharding.parse_mesh_spec(mesh_spec or shape.mesh)
    devices = jax.devices()
    if spec.size > len(devices):
        raise ValueError(
            f"mesh '{spec}' needs {spec.size} devices, this process has {len(devices)}"
        )
    mesh = sharding.make_mesh(spec, devices=devices[: spec.size])
    model_cfg = shape.model

    def make_model(rngs):
        return TrajectoryTransformer(model_cfg, rngs=rngs)

    tx, schedule = make_optimizer(optim or OptimConfig(), 1000)
    state, shardings, parts = build_state(make_model, tx, 0, mesh, rule_specs, materialize=False)
    loader = MeshLoader(mesh, shape.batch_size, model_cfg.attn_layout)
    b, t, f = shape.batch_size, shape.seq_len, shape.feature_dim
    a = shape.target_dim if shape.target_dim is not None else model_cfg.act_dim
    loader.check_seq_len(t)
    shapes = {"kind": (b, t), "values": (b, t, f), "positions": (b, t), "timesteps": (b, t),
              "segment_ids": (b, t), "valid": (b, t), "target": (b, t, a),
              "target_ids": (b, t), "loss_mask": (b, t)}
    batch = loader.abstract(shapes)
    step = jit_step(
        make_step_fn(parts, loss_fn or model_loss, tx, schedule, mesh=mesh,
                     dtype=shape.compute_dtype),
        shardings, {k: v.sharding for k, v in batch.items()}, mesh,
    )
    t0 = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    ma = compiled.memory_analysis()
    params_b = tree_bytes(state.params)
    opt_b = tree_bytes(state.opt_state)
    other_b = tree_bytes([state.step, state.rng, state.rest])
    batch_b = tree_bytes(batch)
    num_params = sum(int(x.size) for x in jax.tree.leaves(
        nnx.state(nnx.eval_shape(lambda: make_model(nnx.Rngs(0))), nnx.Param)))
    arg, out, alias, temp = (ma.argument_size_in_bytes, ma.output_size_in_bytes,
                             ma.alias_size_in_bytes, ma.temp_size_in_bytes)
    return PlanReport(
        name=shape.name, mesh=str(spec), devices=spec.size, num_params=num_params,
        seq_len=t, batch_size=b, compute_dtype=shape.compute_dtype,
        attention=f"{model_cfg.attn_impl}/{model_cfg.attn_layout}",
        params_bytes=params_b, opt_state_bytes=opt_b, other_state_bytes=other_b,
        batch_bytes=batch_b, argument_bytes=arg, output_bytes=out, alias_bytes=alias,
        temp_bytes=temp, generated_code_bytes=ma.generated_code_size_in_bytes,
        peak_bytes=arg + out - alias + temp, compile_s=compile_s,
        attention_memory=shape_attention_memory(shape, spec),
    )


def shape_attention_memory(shape: StepShape, spec) -> dict:
    """:func:`attention_memory` for one training step's shape on mesh ``spec`` (a MeshSpec):
    heads split over ``tensor`` when both head counts divide, batch over data x fsdp, the
    kernels' default chunk on this backend."""
    import jax.numpy as jnp

    from rl_ring.attention import default_chunk

    m = shape.model
    h, hk = m.num_heads, m.kv_heads
    if spec.tensor > 1 and h % spec.tensor == 0 and hk % spec.tensor == 0:
        h, hk = h // spec.tensor, hk // spec.tensor
    batch = max(1, shape.batch_size // (spec.data * spec.fsdp))
    options = dict(m.attn_options)
    return attention_memory(
        seq_len=shape.seq_len, num_devices=spec.seq, heads=h, kv_heads=hk,
        head_dim=m.head_dim, batch=batch, dtype_bytes=jnp.dtype(shape.compute_dtype).itemsize,
        chunk=options.get("q_chunk") or default_chunk(),
    )


def ensure_cpu_devices(n: int) -> bool:
    """Makes this process see at least ``n`` CPU devices, if JAX has not started yet.

    Returns:
        True when the process has (or will have) at least ``n`` devices; False when JAX's
        backend is already running with fewer (the caller must start a fresh process).
    """
    import jax

    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", n)
        return True
    except RuntimeError:
        # The backend already started: usable if it already has the devices.
        return jax.default_backend() == "cpu" and len(jax.devices()) >= n
