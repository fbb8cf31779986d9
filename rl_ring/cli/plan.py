"""``rl-ring plan``: compile a training step without running it and report per-device memory.

The step is described by a preset (``agents.presets.PRESETS``, the names ``rl-ring train
--preset`` takes) or by a run's workdir, and compiled by :func:`rl_ring.train.plan.plan_step`.
Meshes larger than the machine are simulated with fake CPU devices: the device count must be
fixed before JAX starts its backend, so when JAX is already running with too few devices the
command re-runs itself in a fresh process.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from rl_ring.io import device_flags, write_json

PLAN_ENV = "RL_RING_PLAN_CHILD"


@dataclass(frozen=True)
class PlanArgs:
    """Compile one training step for a configuration and print its per-device memory."""

    config: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="CONFIG")]
    """A preset (default, tiny, paper-at-exorl, d4rl-dt, tiny-at, bench-4x128: the names
    'rl-ring train --preset' takes) or a run's workdir."""
    agent: str = "at"
    """Agent whose options the default and tiny presets take (at, dt, bc, ad, dpt)."""
    mesh: str | None = None
    """Mesh spec, e.g. 'seq=64' or 'fsdp=4,seq=64' (default: the preset's)."""
    seq_len: int | None = None
    """Tokens per sequence (default: the preset's)."""
    batch_size: int | None = None
    """Global batch in sequences (default: the preset's)."""
    compute_dtype: str | None = None
    """float32 or bfloat16 (default: the preset's)."""
    impl: str | None = None
    """Attention implementation: reference, blockwise, ring, allgather, ulysses or auto
    (default: the preset's). The report also estimates each strategy's attention memory."""
    layout: str | None = None
    """Attention layout: contiguous, zigzag or striped (default: the preset's)."""
    remat: str | None = None
    """Rematerialisation policy (default: the preset's)."""
    json_out: str | None = None
    """Also write the report as JSON to this path."""


def resolve_shape(args: PlanArgs):
    """The StepShape that ``args`` describe (preset or workdir, with overrides)."""
    from agents.presets import PRESETS, step_shape
    from agents.run import shape_from_workdir

    if args.config in PRESETS:
        shape = step_shape(args.config, args.agent)
    elif Path(args.config).is_dir():
        shape = shape_from_workdir(args.config)
    else:
        raise ValueError(
            f"plan: {args.config!r} is neither a preset ({list(PRESETS)}) nor a run's workdir"
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


def _rerun(argv: list[str], n: int) -> int:
    # Compiling only: kernels keep their threads (single_threaded_kernels=False).
    env = {**os.environ, "XLA_FLAGS": device_flags(n, os.environ.get("XLA_FLAGS", ""),
                                                   single_threaded_kernels=False),
           "JAX_PLATFORMS": "cpu"}
    env[PLAN_ENV] = "1"
    cmd = [sys.executable, "-m", "rl_ring.cli.plan", *argv]
    return subprocess.run(cmd, env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    """``rl-ring plan CONFIG [--mesh ...]``: prints the per-device memory of a training step."""
    from rl_ring import sharding
    from rl_ring.train.plan import ensure_cpu_devices, plan_step

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
        write_json(dataclasses.asdict(report), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
