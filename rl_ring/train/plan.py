"""``rl-ring plan``: compile a training step without running it and report per-device memory.

The step is lowered on abstract inputs (``jax.ShapeDtypeStruct`` carrying shardings), so no
parameter, optimiser state or batch is ever allocated; the compiled executable's
``memory_analysis()`` gives the per-device sizes. Meshes larger than the machine are
simulated with fake CPU devices: the device count must be fixed before JAX starts its
backend, so when JAX is already running with too few devices the command re-runs itself in
a fresh process.

Numbers are XLA:CPU's buffer assignment for the SPMD-partitioned step: the arguments and
outputs are exact per-device sizes; the temporary size (activations kept for the backward
pass and workspace) is the CPU compiler's and can differ from a GPU/TPU compiler's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

PLAN_ENV = "RL_RING_PLAN_CHILD"


@dataclass(frozen=True)
class PlanArgs:
    """Compile one training step for a configuration and print its per-device memory."""

    config: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CONFIG")]
    """A preset name (paper-at-exorl, d4rl-dt, tiny-at, bench-4x128) or a run's workdir."""
    mesh: str | None = None
    """Mesh spec, e.g. 'seq=64' or 'fsdp=4,seq=64' (default: the preset's)."""
    seq_len: int | None = None
    """Tokens per sequence (default: the preset's)."""
    batch_size: int | None = None
    """Global batch in sequences (default: the preset's)."""
    compute_dtype: str | None = None
    """float32 or bfloat16 (default: the preset's)."""
    impl: str | None = None
    """Attention implementation: reference, blockwise or ring (default: the preset's)."""
    layout: str | None = None
    """Attention layout: contiguous, zigzag or striped (default: the preset's)."""
    remat: str | None = None
    """Rematerialisation policy (default: the preset's)."""
    json_out: str | None = None
    """Also write the report as JSON to this path."""


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
        shape: a :class:`~rl_ring.train.presets.StepShape`.
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
    from rl_ring.train.optim import OptimConfig, make_optimizer
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


def resolve_shape(args: PlanArgs):
    """The StepShape that ``args`` describe (preset or workdir, with overrides)."""
    from rl_ring.train.presets import SHAPES, get_shape

    if args.config in SHAPES:
        shape = get_shape(args.config)
    elif Path(args.config).is_dir():
        from rl_ring.train.api import shape_from_workdir

        shape = shape_from_workdir(args.config)
    else:
        raise ValueError(
            f"plan: {args.config!r} is neither a preset ({sorted(SHAPES)}) nor a run's workdir"
        )
    model_changes = {k: v for k, v in (("attn_impl", args.impl), ("attn_layout", args.layout),
                                       ("remat", args.remat)) if v is not None}
    if args.compute_dtype is not None:
        model_changes["dtype"] = args.compute_dtype
    changes: dict[str, Any] = {}
    if model_changes:
        changes["model"] = shape.model.replace(**model_changes)
    if args.compute_dtype is not None:
        changes["compute_dtype"] = args.compute_dtype
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    if args.seq_len is not None:
        if args.seq_len % shape.tokens_per_step:
            raise ValueError(
                f"--seq-len {args.seq_len} is not a multiple of the {shape.tokens_per_step} "
                f"tokens per step of preset {shape.name!r}"
            )
        changes["steps_per_sequence"] = args.seq_len // shape.tokens_per_step
    if args.mesh is not None:
        changes["mesh"] = args.mesh
    return shape.replace(**changes)


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


def _rerun(argv: list[str], n: int) -> int:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
    env["JAX_PLATFORMS"] = "cpu"
    env[PLAN_ENV] = "1"
    cmd = [sys.executable, "-m", "rl_ring.train.plan", *argv]
    return subprocess.run(cmd, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    """``rl-ring plan CONFIG [--mesh ...]``: prints the per-device memory of a training step."""
    from rl_ring import sharding

    argv = list(sys.argv[1:] if argv is None else argv)
    args = tyro.cli(PlanArgs, args=argv, prog="rl-ring plan")
    try:
        shape = resolve_shape(args)
        n = sharding.parse_mesh_spec(shape.mesh).size
    except ValueError as err:
        print(f"rl-ring plan: {err}", file=sys.stderr)
        return 2
    if not ensure_cpu_devices(n):
        if os.environ.get(PLAN_ENV):
            print(f"rl-ring plan: could not get {n} CPU devices", file=sys.stderr)
            return 1
        return _rerun(argv, n)
    try:
        report = plan_step(shape)
    except ValueError as err:
        print(f"rl-ring plan: {err}", file=sys.stderr)
        return 2
    print(report.table())
    if args.json_out:
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(dataclasses.asdict(report), indent=1))
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
