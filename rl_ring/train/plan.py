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
        return "\n".join(lines)


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
