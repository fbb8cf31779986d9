"""Launch a full-scale recipe: convert (ExoRL), train, evaluate, or plan its memory.

    python -m experiments.recipes.launch list
    python -m experiments.recipes.launch plan at-exorl-walker_run --mesh seq=64
    python -m experiments.recipes.launch run at-exorl-walker_run --data-root /data/exorl \\
        --work-root runs/recipes --hardware 8gpu --stage all
    python -m experiments.recipes.launch run dt-d4rl-hopper-medium-v2 --data-root /data/d4rl \\
        --work-root runs/recipes --seed 1

Stages: ``convert`` (ExoRL only: ``rl-ring data convert`` relabels the buffer's rewards for
the task into an EpisodeStore, once, on one process), ``train`` (``rl-ring train`` with the
recipe's configuration: every process of a multi-host job runs it), ``eval`` (one process:
the evaluator on the last checkpoint, conditioned on the recipe's target return), ``all``
(the three in order on one process; convert only when its output is missing).

Multi-host: before JAX starts, :func:`rl_ring.sharding.init_distributed` joins the processes
into one runtime. Its coordinator, process count and rank come from ``RL_RING_COORDINATOR``,
``RL_RING_NUM_PROCESSES`` and ``RL_RING_PROCESS_ID``, or else from SLURM
(``SLURM_NTASKS``, ``SLURM_PROCID``, with ``RL_RING_COORDINATOR`` set by the job script to
the first node); see ``experiments/recipes/*.sh``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from experiments.recipes.configs import RECIPES, Recipe, get, mesh_for


@dataclass(frozen=True)
class RunArgs:
    """Run a recipe's stages."""

    recipe: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RECIPE")]
    """Recipe name (``list`` prints them)."""
    data_root: str = "data"
    """ExoRL: the directory holding ``datasets/<domain>/<algo>/buffer``; D4RL: the directory
    holding ``<dataset>.hdf5``."""
    work_root: str = "runs/recipes"
    """Runs go to <work-root>/<recipe>/seed<seed>."""
    stage: Literal["convert", "train", "eval", "all"] = "all"
    """Which stage(s) to run."""
    hardware: str = ""
    """Named mesh of the recipe (8gpu, 64gpu, 64gpu-fsdp, tpu-v4-64, 1gpu, cpu); '' keeps
    --mesh or the recipe's default."""
    mesh: str = ""
    """Explicit mesh spec (overrides --hardware)."""
    seed: int = 0
    """Training seed."""
    steps: int = 0
    """Training steps (0: the recipe's)."""
    workers: int = 0
    """Processes for the convert stage's relabelling (0: one per core)."""
    dry_run: bool = False
    """Print the commands and the distributed setup, run nothing."""
    overwrite: bool = False
    """Replace an earlier evaluation report of this run (without it, one is refused)."""


@dataclass(frozen=True)
class PlanArgs:
    """Compile one training step of a recipe on fake CPU devices and print its memory."""

    recipe: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RECIPE")]
    """Recipe name."""
    mesh: str = ""
    """Mesh spec (default: the recipe's)."""
    seq_len: int = 0
    """Tokens per sequence (0: the recipe's; smaller for a quick check)."""
    impl: str = ""
    """Attention implementation override (reference, blockwise, ring)."""
    batch_size: int = 0
    """Global batch in sequences (0: the recipe's; an fsdp axis needs at least its size)."""
    json_out: str = ""
    """Also write the report as JSON here."""


# ---------------------------------------------------------------------- distributed setup
def distributed_env(environ: dict[str, str]) -> dict[str, str]:
    """``RL_RING_*`` variables for :func:`rl_ring.sharding.init_distributed`, completed from
    SLURM's when absent (``SLURM_NTASKS``, ``SLURM_PROCID``); a single process needs none.

    Raises:
        ValueError: a SLURM job of several tasks without ``RL_RING_COORDINATOR``.
    """
    out = {k: environ[k] for k in ("RL_RING_COORDINATOR", "RL_RING_NUM_PROCESSES",
                                   "RL_RING_PROCESS_ID") if environ.get(k)}
    ntasks = environ.get("SLURM_NTASKS")
    if ntasks and int(ntasks) > 1:
        out.setdefault("RL_RING_NUM_PROCESSES", ntasks)
        out.setdefault("RL_RING_PROCESS_ID", environ.get("SLURM_PROCID", ""))
        if "RL_RING_COORDINATOR" not in out:
            raise ValueError(
                f"SLURM job with {ntasks} tasks: set RL_RING_COORDINATOR=<first node>:<port> "
                "(experiments/recipes/slurm_multi_host.sh does: scontrol show hostnames "
                "$SLURM_JOB_NODELIST | head -n1)"
            )
    return out


def join_processes(dist: dict[str, str]) -> tuple[int, int]:
    """Joins the multi-process runtime that ``dist`` (:func:`distributed_env`) describes, if
    any; returns ``(rank, count)``. Must run before JAX starts its backend."""
    os.environ.update(dist)
    from rl_ring import sharding

    sharding.init_distributed()
    import jax

    return jax.process_index(), jax.process_count()


# ---------------------------------------------------------------------- commands
def run_paths(recipe: Recipe, args: RunArgs) -> dict[str, Path]:
    root = Path(args.data_root)
    workdir = Path(args.work_root) / recipe.name / f"seed{args.seed}"
    return {"data": root / recipe.data, "source": root / recipe.source if recipe.source else root,
            "workdir": workdir, "eval": workdir / "eval"}


def convert_argv(recipe: Recipe, args: RunArgs) -> list[str]:
    """``rl-ring data convert`` arguments (ExoRL recipes: relabel into an EpisodeStore)."""
    p = run_paths(recipe, args)
    argv = ["convert", str(p["source"]), str(p["data"]), "--to", "store",
            "--task", recipe.relabel]
    return argv + (["--workers", str(args.workers)] if args.workers else [])


def train_argv(recipe: Recipe, args: RunArgs) -> list[str]:
    """``rl-ring train`` arguments reproducing the recipe's TrainConfig (a test checks that
    they parse back to it)."""
    p = run_paths(recipe, args)
    cfg = recipe.train
    mesh = args.mesh or (mesh_for(recipe, args.hardware) if args.hardware else cfg.mesh)
    argv = ["--agent", cfg.agent, "--preset", cfg.preset, "--data", str(p["data"]),
            "--env", recipe.env, "--workdir", str(p["workdir"]), "--mesh", mesh,
            "--seed", str(args.seed), "--steps", str(args.steps or cfg.steps),
            "--ckpt-every", str(cfg.ckpt_every), "--log-every", str(cfg.log_every)]
    agent_cfg, preset_cfg = cfg.agent_config, _preset_agent_config(cfg)
    for prefix, ours, theirs in (("agent-config", agent_cfg, preset_cfg),
                                 ("agent-config.model", agent_cfg.model, preset_cfg.model)):
        for f in dataclasses.fields(ours):
            value = getattr(ours, f.name)
            if f.name != "model" and value != getattr(theirs, f.name):
                argv += _option(f"{prefix}.{f.name.replace('_', '-')}", value)
    return argv


def _option(name: str, value) -> list[str]:
    """One option in tyro's syntax: booleans are flags, tuples are space-separated."""
    if isinstance(value, bool):
        head, _, last = name.rpartition(".")
        return [f"--{head}.{last}" if value else f"--{head}.no-{last}"]
    if isinstance(value, tuple):
        return [f"--{name}", *[str(v) for v in value]]
    return [f"--{name}", str(value)]


def _preset_agent_config(cfg):
    from agents.presets import train_preset

    return train_preset(cfg.preset, cfg.agent).agent_config


def eval_config(recipe: Recipe, args: RunArgs):
    from rl_ring.eval.evaluate import EvalConfig

    p = run_paths(recipe, args)
    return EvalConfig(env=recipe.env, out=str(p["eval"]), checkpoint=str(p["workdir"]),
                      trials=recipe.trials, envs=recipe.eval_envs, seeds=recipe.eval_seeds,
                      task_split="none", score_name=recipe.score_name or None,
                      overwrite=args.overwrite)


def run(args: RunArgs) -> int:
    recipe = get(args.recipe)
    p = run_paths(recipe, args)
    stages = ["convert", "train", "eval"] if args.stage == "all" else [args.stage]
    if "convert" in stages and not recipe.source:
        stages.remove("convert")
        if args.stage == "convert":
            print(f"{recipe.name}: nothing to convert (D4RL data is read as is)")
    # Only training spans processes; convert and eval run on one process of the job.
    dist = distributed_env(dict(os.environ)) if "train" in stages else {}
    if dist and len(stages) > 1:
        raise ValueError(
            f"--stage {args.stage} in a multi-process job ({dist}): run --stage convert and "
            "--stage eval on one process, --stage train on every process"
        )
    if args.dry_run:
        print(f"# {recipe.name}: distributed {dist or 'single process'}")
        if "convert" in stages:
            print("rl-ring data " + " ".join(convert_argv(recipe, args)))
        if "train" in stages:
            print("rl-ring train " + " ".join(train_argv(recipe, args)))
        if "eval" in stages:
            print(f"# eval (process 0): {eval_config(recipe, args)}, target return "
                  f"{recipe.target_return}")
        return 0
    if "convert" in stages and not p["data"].exists():
        from rl_ring.cli.data import main as data_main

        if data_main(convert_argv(recipe, args)) != 0:
            return 2
    if "train" in stages:
        from rl_ring.cli.train import main as train_main

        join_processes(dist)
        status = train_main(train_argv(recipe, args))
        if status != 0:
            return status
    if "eval" in stages:
        evaluate(recipe, args)
    return 0


def evaluate(recipe: Recipe, args: RunArgs) -> dict:
    """Evaluates the run's last checkpoint with the recipe's target return."""
    from agents.policy import eval_policy_from_checkpoint
    from envs.evaluation import env_factory
    from rl_ring.eval.evaluate import evaluate as run_eval
    from rl_ring.eval.evaluate import summary_lines

    cfg = eval_config(recipe, args)
    context = {"context_steps": recipe.eval_context_steps} if recipe.eval_context_steps else {}
    report = run_eval(cfg, make_env=env_factory(cfg.env),
                      policy=lambda space: eval_policy_from_checkpoint(
                          cfg.checkpoint, action_space=space,
                          target_return=recipe.target_return, **context))
    for line in summary_lines(report):
        print(line)
    return report


def plan(args: PlanArgs) -> int:
    """Compiles the recipe's step on fake devices (re-running itself when JAX has too few)."""
    from rl_ring import sharding
    from rl_ring.train.plan import ensure_cpu_devices, plan_step

    recipe = get(args.recipe)
    shape = recipe.shape
    if args.seq_len:
        if args.seq_len % shape.tokens_per_step:
            raise ValueError(f"--seq-len {args.seq_len}: not a multiple of "
                             f"{shape.tokens_per_step} tokens per step")
        shape = shape.replace(steps_per_sequence=args.seq_len // shape.tokens_per_step)
    if args.impl:
        shape = shape.replace(model=shape.model.replace(attn_impl=args.impl))
    if args.mesh:
        shape = shape.replace(mesh=args.mesh)
    if args.batch_size:
        shape = shape.replace(batch_size=args.batch_size)
    n = sharding.parse_mesh_spec(shape.mesh).size
    if not ensure_cpu_devices(n):
        raise RuntimeError(f"plan needs {n} CPU devices; run it in a fresh process "
                           f"(XLA_FLAGS=--xla_force_host_platform_device_count={n})")
    report = plan_step(shape, optim=recipe.train.optim)
    print(report.table())
    if args.json_out:
        from rl_ring.io import write_json

        write_json(dataclasses.asdict(report), args.json_out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    try:
        if command == "list":
            for name, r in RECIPES.items():
                print(f"{name:38s} {r.env:28s} data {r.data}")
            return 0
        if command == "plan":
            return plan(tyro.cli(PlanArgs, args=rest, prog="launch plan"))
        if command == "run":
            return run(tyro.cli(RunArgs, args=rest, prog="launch run"))
    except ValueError as err:
        print(f"launch: {err}", file=sys.stderr)
        return 2
    print(f"launch: unknown command {command!r}; expected list, plan or run", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
