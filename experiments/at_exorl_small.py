"""More trajectories in context, at small scale: BC-10 %, DT and AT (n = 4, 16, 64) on
ExoRL-format data collected locally, 3 seeds each, evaluated over several trials in context.

    python -m experiments.at_exorl_small                 # the full grid (hours on 2 cores)
    python -m experiments.at_exorl_small --tiny          # about a minute (the test runs it)
    python -m experiments.at_exorl_small --tasks cartpole --settings dt at4 --seeds 0

Pipeline, all through the library: ``rl-ring collect --policy scripted --format exorl`` (noisy
scripted controllers, mixed quality) -> ``read_exorl(..., task=...)`` (rewards relabelled from
the saved physics) -> ``train(cfg)`` (AT n=64 with ring attention over 8 devices) ->
``evaluate`` on the checkpoint (KV-cached policy, several trials per row; AT keeps earlier
trials in context) -> ``results/at_small.json`` + ``.png`` (last trial and best of n side by
side, mean +- std over training seeds), and the compiled per-device memory of every
setting's step with dense, blockwise and ring attention (``results/at_small_memory.png``).

Every finished piece (dataset, training run, evaluation) is kept under ``--workdir`` and
skipped when the command runs again, so an interrupted grid resumes where it stopped.
Run it as a module or script: it fakes 8 CPU devices, which must happen before JAX starts.
"""

from __future__ import annotations

import os

from rl_ring.io import device_flags, write_json

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = device_flags(8, os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("MUJOCO_GL", "disable")

import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from experiments import at_small_report as report  # noqa: E402
from experiments.configs.at_small import (  # noqa: E402
    TASKS,
    TINY_TASKS,
    Setting,
    SmallConfig,
    TaskSpec,
    setting,
)

TRAIN_SUMMARY = "train_summary.json"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def task_specs(cfg: SmallConfig, tiny: bool) -> list[TaskSpec]:
    """The tasks of ``cfg`` (the tiny variant has its own short task)."""
    table = TINY_TASKS if tiny else TASKS
    unknown = [t for t in cfg.tasks if t not in table]
    if unknown:
        raise ValueError(f"--tasks: unknown {unknown}; known tasks: {sorted(table)}")
    specs = [table[t] for t in cfg.tasks]
    if cfg.episodes:
        specs = [dataclasses.replace(s, episodes=cfg.episodes) for s in specs]
    return specs


# ---------------------------------------------------------------------- data
def collect(task: TaskSpec, cfg: SmallConfig) -> Path:
    """The task's ExoRL buffer, collected with ``rl-ring collect`` unless already there."""
    from envs.collect import main as collect_main

    buffer = Path(cfg.workdir) / "data" / task.name / "buffer"
    if buffer.is_dir():
        found = len(list(buffer.glob("*.npz")))
        if found != task.episodes:
            raise ValueError(
                f"{buffer}: holds {found} episodes, the configuration asks for {task.episodes}; "
                "remove the directory or use another --workdir"
            )
        return buffer
    argv = [task.env, "--policy", "scripted", "--noise", *[str(n) for n in task.noise],
            "--episodes", str(task.episodes), "--format", "exorl", "--out", str(buffer),
            "--seed", str(cfg.data_seed), "--quiet"]
    log("rl-ring collect " + " ".join(argv))
    if collect_main(argv) != 0:
        raise RuntimeError(f"rl-ring collect {' '.join(argv)} failed")
    return buffer


def load_store(task: TaskSpec, buffer: Path):
    """The buffer read back with rewards relabelled for the task (the ExoRL path)."""
    import envs

    return envs.load_dataset(buffer, task=task.relabel, workers=1)


def dataset_stats(store) -> dict[str, Any]:
    """Returns of the dataset: quantiles, and mean +- std per scripted noise level."""
    ret = np.asarray(store.episode_returns, np.float64)
    lengths = np.diff(store.episode_starts)
    out = {
        "episodes": int(store.num_episodes), "steps": int(store.num_steps),
        "episode_length": int(lengths.max()),
        "return_mean": float(ret.mean()), "return_median": float(np.median(ret)),
        "return_p90": float(np.percentile(ret, 90)), "return_max": float(ret.max()),
        "return_min": float(ret.min()),
    }
    noise = store.episode_extras.get("policy_noise")
    if noise is not None:
        out["by_noise"] = {
            f"{lvl:g}": {"mean": float(ret[noise == lvl].mean()),
                         "std": float(ret[noise == lvl].std()),
                         "episodes": int((noise == lvl).sum())}
            for lvl in np.unique(noise)
        }
    return out


# ---------------------------------------------------------------------- training
def agent_config(s: Setting, cfg: SmallConfig):
    """The agent's options: the shared small model, the setting's context."""
    import agents

    module = agents.get(s.agent)
    base = module.Config()
    # One model for every agent; dense attention for the short DT/BC windows, blockwise for
    # AT chains (the train config switches to ring when the mesh has a seq axis > 1).
    model = base.model.replace(
        width=cfg.width, depth=cfg.depth, num_heads=cfg.heads, dropout=cfg.dropout,
        attn_impl="blockwise" if s.agent == "at" else "reference", attn_layout=s.layout,
        attn_options=(("q_chunk", cfg.attn_chunk), ("k_chunk", cfg.attn_chunk)),
    )
    if s.agent == "at":
        return module.Config(num_trajectories=s.num_trajectories, model=model)
    if s.agent == "dt":
        return module.Config(context_steps=cfg.context_steps, model=model)
    return module.Config(top_percent=cfg.bc_top_percent, context_steps=cfg.context_steps,
                         model=model)


def batch_size(s: Setting, cfg: SmallConfig, episode_length: int) -> int:
    """Equal action targets per batch: ``trajectories_per_batch`` episodes' worth."""
    if s.agent == "at":
        return max(1, cfg.trajectories_per_batch // s.num_trajectories)
    return max(1, cfg.trajectories_per_batch * episode_length // cfg.context_steps)


def run_dir(cfg: SmallConfig, task: TaskSpec, s: Setting, seed: int) -> Path:
    return Path(cfg.workdir) / "runs" / task.name / s.name / f"seed{seed}"


def train_config(cfg: SmallConfig, task: TaskSpec, s: Setting, seed: int, buffer: Path,
                 episode_length: int):
    from rl_ring import sharding
    from rl_ring.train import TrainConfig
    from rl_ring.train.optim import OptimConfig

    return TrainConfig(
        agent=s.agent, data=str(buffer), env=task.env,
        workdir=str(run_dir(cfg, task, s, seed)), mesh=s.mesh,
        devices=sharding.parse_mesh_spec(s.mesh).size, steps=cfg.steps,
        batch_size=batch_size(s, cfg, episode_length), seed=seed,
        optim=OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup_steps),
        log_every=10, ckpt_every=max(1, min(100, cfg.steps)), keep_checkpoints=1,
        progress=cfg.progress, tensorboard=False, agent_config=agent_config(s, cfg),
    )


def train_run(cfg: SmallConfig, task: TaskSpec, s: Setting, seed: int, buffer: Path,
              store) -> dict[str, Any]:
    """Trains one (task, setting, seed) unless its summary exists; returns the summary."""
    from agents.run import train

    tc = train_config(cfg, task, s, seed, buffer, int(np.diff(store.episode_starts).max()))
    path = Path(tc.workdir) / TRAIN_SUMMARY
    if path.exists():
        return json.loads(path.read_text())
    log(f"train {task.name}/{s.name}/seed{seed}: batch {tc.batch_size}, mesh {tc.mesh}, "
        f"{tc.steps} steps")
    t0 = time.perf_counter()
    result = train(tc, store=store)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (Path(tc.workdir) / "metrics.jsonl").open()]
    meta = json.loads((Path(tc.workdir) / "config.json").read_text())
    k = max(1, min(10, len(result.losses) // 4))
    summary = {
        "task": task.name, "setting": s.name, "seed": seed, "agent": s.agent,
        "num_trajectories": s.num_trajectories, "mesh": tc.mesh,
        "attention": "ring" if sharding_seq(tc.mesh) > 1 else tc.agent_config.model.attn_impl,
        "batch_size": tc.batch_size, "seq_len": meta["batch_shape"]["seq_len"],
        "steps": int(result.step), "wall_s": wall, "compile_s": result.compile_s,
        "tokens_per_s": result.tokens_per_s,
        "loss_first": float(np.mean(result.losses[:k])),
        "loss_last": float(np.mean(result.losses[-k:])),
        "loss_curve": [[r["step"], r["loss"]] for r in rows if "loss" in r],
    }
    write_json(summary, path)
    log(f"  done in {wall:.0f} s: loss {summary['loss_first']:.4f} -> {summary['loss_last']:.4f}"
        f", {summary['tokens_per_s']:.0f} tokens/s")
    return summary


def sharding_seq(mesh: str) -> int:
    from rl_ring import sharding

    return sharding.parse_mesh_spec(mesh).seq


# ---------------------------------------------------------------------- evaluation
def eval_run(cfg: SmallConfig, task: TaskSpec, s: Setting, seed: int,
             episode_length: int) -> dict[str, Any]:
    """Evaluates one trained run (KV-cached policy, ``trials`` per row) unless done.

    AT's full context drops a whole trial at once (``slide_steps`` = the episode length), so
    its context always starts at a trial's first step, as training chains do, and the cache
    is refilled once per trial instead of at every step; DT and BC slide step by step, as
    their training windows start anywhere.
    """
    from agents.policy import eval_policy_from_checkpoint
    from envs.evaluation import env_factory
    from rl_ring.eval.evaluate import EvalConfig, evaluate

    workdir = run_dir(cfg, task, s, seed)
    out = workdir / "eval"
    path = out / "report.json"
    slide = episode_length if s.agent == "at" else 1
    # The slide is a policy option the evaluator's report does not hold: kept beside it
    # (a report without it was made with the default, 1).
    policy_file = out / "policy.json"
    if path.exists():
        rep = json.loads(path.read_text())
        used = json.loads(policy_file.read_text()) if policy_file.exists() else {}
        shape = (rep["trials"], rep["num_envs"], rep["num_seeds"], used.get("slide_steps", 1))
        if rep.get("complete") and shape == (cfg.trials, cfg.eval_envs, cfg.eval_seeds,
                                             slide):
            return report.run_scores(rep)
    log(f"eval {task.name}/{s.name}/seed{seed}: {cfg.trials} trials x {cfg.eval_envs} envs x "
        f"{cfg.eval_seeds} seeds")
    ec = EvalConfig(env=task.env, out=str(out), checkpoint=str(workdir), trials=cfg.trials,
                    envs=cfg.eval_envs, seeds=cfg.eval_seeds, first_seed=0, task_split="none",
                    progress=cfg.progress,
                    overwrite=True)  # inside this experiment's own claimed work directory
    t0 = time.perf_counter()
    rep = evaluate(ec, make_env=env_factory(task.env),
                   policy=lambda space: eval_policy_from_checkpoint(
                       workdir, action_space=space, slide_steps=slide))
    write_json({"slide_steps": slide, "cached": True}, policy_file)
    scores = report.run_scores(rep)
    log(f"  done in {time.perf_counter() - t0:.0f} s: last {scores['last']:.2f}, best of "
        f"{cfg.trials} {scores['best_of_n']:.2f}")
    return scores


# ---------------------------------------------------------------------- the grid
def run(cfg: SmallConfig, *, tiny: bool = False) -> dict[str, Any]:
    """Collect, train, evaluate and summarise the grid of ``cfg``; returns the summary."""
    t_start = time.perf_counter()
    specs = task_specs(cfg, tiny)
    settings = [setting(name) for name in cfg.settings]
    data: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    for task in specs:
        buffer = collect(task, cfg)
        store = load_store(task, buffer)
        data[task.name] = {"env": task.env, "relabel": task.relabel, "noise": list(task.noise),
                           "buffer": str(buffer), **dataset_stats(store)}
        length = int(np.diff(store.episode_starts).max())
        # Seed by seed, so that a complete first seed of every setting comes early.
        for seed in cfg.seeds:
            for s in settings:
                summary = train_run(cfg, task, s, seed, buffer, store)
                runs.append({**summary, "eval": eval_run(cfg, task, s, seed, length)})
    memory = report.memory_plan(cfg, specs[0], settings, run_dir) if cfg.memory_plan else None
    result = report.summarise(cfg, data, runs, memory, tiny=tiny,
                              wall_s=time.perf_counter() - t_start)
    report.write(result, Path(cfg.out))
    return result


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    tiny = "--tiny" in argv
    argv = [a for a in argv if a != "--tiny"]
    default = (SmallConfig.tiny("runs/at_small_tiny", "runs/at_small_tiny/at_small.json")
               if tiny else SmallConfig())
    cfg = tyro.cli(SmallConfig, args=argv, default=default, prog="at_exorl_small",
                   description="AT vs DT vs BC at small scale (--tiny: about a minute).")
    from rl_ring.io import check_results, claim_run_dir

    out = Path(cfg.out)
    try:
        check_results([out, out.with_suffix(".png"), out.with_name(out.stem + "_memory.png")],
                      workdir=cfg.workdir, overwrite=cfg.overwrite, what="at_small's summary")
        claim_run_dir(cfg.workdir, kind="at_small", overwrite=cfg.overwrite)
    except OSError as err:
        print(f"at_exorl_small: {err}", file=sys.stderr)
        return 2
    result = run(cfg, tiny=tiny)
    for line in report.table_lines(result):
        print(line)
    print(f"wrote {cfg.out} and {Path(cfg.out).with_suffix('.png')} "
          f"({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
