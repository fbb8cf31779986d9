"""The first in-context episode of grid AD models next to their sources: do they search?

A learning history's first episode starts from an empty context, in training data and in
evaluation alike, so a model that imitates its sources should play their first episode: as
many cells visited, no walks into a wall (the sources never make one). This script plays
episode 1 of the first ``--tasks`` held-out tasks (the fixed shuffle of
``envs.registry.task_subset``) with every finished AD run of the given
``experiments.context_scaling`` run folders (decoding as their evaluation does: sampled), with
each source (one-episode histories, seeds of their own) and with uniformly random actions, and
counts per episode:

* ``return``, ``found`` (a positive return: Dark Room's goal, Key-to-Door's key) and
  ``solved`` (the task's optimal return: Key-to-Door's door after the key);
* ``cells``: distinct cells visited (the start included);
* ``wall_moves``: the fraction of moves (actions other than the no-op) that leave the agent
  where it was, i.e. walked into a wall; ``noops``: the fraction of no-op actions;
* ``actions``: the frequency of each of the five actions;
* ``greedy`` (each run, ``--greedy``): the same counts with the argmax action;
* ``teacher_forced`` (each run): the same model fed its sources' own steps instead of its
  own (the first window of ``--teacher-forced`` training histories): the probability it
  puts on a move into the wall where the source stands at one, and its argmax accuracy.
  Small there and large when it plays is the signature of compounding errors: the model
  knows the walls in the sources' contexts and loses them in its own.

::

    python -m experiments.grid_first_episode --env keydoor --folders \\
        runs/context_scaling/keydoor runs/context_scaling/keydoor-hist128-histories2000-eval158

Writes ``results/grid_first_episode_<env>.json`` + ``.png`` (each window of a folder: mean ±
std over its training seeds; every number is over ``--tasks`` episodes).
"""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs import gridworld as gw
from experiments import context_scaling as cs

RESULTS = "grid_first_episode"
STATS = ("return", "found", "solved", "cells", "wall_moves", "noops")


@dataclass(frozen=True)
class Args:
    """Options of the first-episode comparison."""

    env: str = "keydoor"
    """Grid family: darkroom-hard or keydoor."""
    folders: tuple[str, ...] = ()
    """context_scaling run folders whose finished AD runs (``ad-w<W>-seed<S>``) are played."""
    tasks: int = 64
    """Held-out tasks, the first of the fixed shuffle (one episode each per player)."""
    teacher_forced: int = 64
    """Also score each run teacher-forced on the first window of this many of its training
    histories (0: not): its probability of a move into the wall where the source stands at
    one (:func:`teacher_forced`)."""
    greedy: bool = True
    """Also play each run with its argmax action (``greedy`` of each run and player)."""
    seed: int = 0
    """Seed of the episodes (the env and policy streams of ``rl_ring.eval.env_spec``) and of
    the sources' histories."""
    out: str = "results"
    """Directory of the JSON / PNG results."""
    overwrite: bool = False
    """Replace result files already in --out."""


# ---------------------------------------------------------------------- statistics
def episode_stats(start: np.ndarray, before: np.ndarray, actions: np.ndarray,
                  after: np.ndarray, ret: float, optimal: float) -> dict[str, Any]:
    """One episode's counts: ``start`` ``[2]`` the first cell, ``before`` / ``after``
    ``[T, 2]`` the cell before / after each of the ``T`` ``actions``."""
    before, after = np.asarray(before).reshape(-1, 2), np.asarray(after).reshape(-1, 2)
    actions = np.asarray(actions).reshape(-1).astype(np.int64)
    if not len(before) == len(after) == len(actions):
        raise ValueError(f"episode_stats: {len(before)} cells before, {len(after)} after and "
                         f"{len(actions)} actions; expected one of each per step")
    moves = actions != 0
    stayed = np.all(before == after, axis=1)
    cells = {tuple(int(v) for v in start)} | {tuple(int(v) for v in c) for c in after}
    return {"return": float(ret), "found": float(ret > 0),
            "solved": float(ret >= optimal - 1e-9), "cells": float(len(cells)),
            "wall_moves": float((moves & stayed).sum() / max(1, moves.sum())),
            "noops": float((~moves).mean()) if len(actions) else 0.0,
            "actions": np.bincount(actions, minlength=gw.NUM_ACTIONS).astype(float)}


def summarize(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean of each count over the episodes (each episode weighs 1) and the actions'
    frequencies over all their steps."""
    out = {k: float(np.mean([e[k] for e in episodes])) for k in STATS}
    acts = np.sum([e["actions"] for e in episodes], axis=0)
    out["actions"] = dict(zip(gw.ACTION_NAMES, (acts / max(1.0, acts.sum())).tolist(),
                              strict=True))
    out["episodes"] = len(episodes)
    return out


# ---------------------------------------------------------------------- players
def play_first_episode(policy, env_id: str, tasks: list[int], seed: int) -> list[dict]:
    """Episode 1 of every task, one row each, through the ``rl_ring.eval`` ``Policy``
    protocol (reset, begin_trial, act, observe); row ``i`` is built and reset with the
    evaluation's seeds (``env_seed`` / ``episode_seed(seed, i, 0)``) and its policy stream
    is ``policy_seed(seed, i)``."""
    import envs
    from rl_ring.eval.env_spec import env_seed, episode_seed, policy_seed

    n = len(tasks)
    rows = [envs.make(env_id, task=t, seed=env_seed(seed, i)) for i, t in enumerate(tasks)]
    obs = np.stack([e.reset(seed=episode_seed(seed, i, 0))[0] for i, e in enumerate(rows)])
    policy.reset(n, seeds=[policy_seed(seed, i) for i in range(n)])
    active = np.ones(n, bool)
    policy.begin_trial(active.copy())
    start = np.rint(obs[:, :2]).astype(np.int64)
    trace: list[list[tuple]] = [[] for _ in range(n)]
    returns = np.zeros(n)
    while active.any():
        actions = np.asarray(policy.act(obs, active.copy()))
        reward, term, trunc = np.zeros(n), np.zeros(n, bool), np.zeros(n, bool)
        for i in np.flatnonzero(active):
            cell = np.rint(obs[i, :2]).astype(np.int64)
            o, r, te, tr, _ = rows[i].step(int(actions[i]))
            obs[i], reward[i], term[i], trunc[i] = o, r, te, tr
            trace[i].append((cell, int(actions[i]), np.rint(o[:2]).astype(np.int64)))
        returns += reward
        policy.observe(reward, term, trunc, active.copy())
        active &= ~(term | trunc)
    for e in rows:
        e.close()
    optimal = [envs.optimal_return(env_id, t) for t in tasks]
    return [episode_stats(start[i], [s[0] for s in trace[i]], [s[1] for s in trace[i]],
                          [s[2] for s in trace[i]], returns[i], optimal[i])
            for i in range(n)]


def source_first_episodes(cfg: cs.ScalingConfig, learner: str, tasks: list[int],
                          seed: int) -> list[dict]:
    """Episode 1 of a one-episode history of ``learner`` on every task (from its store:
    observations before, ``next_observations`` after each step)."""
    import envs

    store = cs.source_histories(cfg.replace(history_episodes=1), learner, tasks, seed=seed)
    x = store.episode_extras
    order = np.argsort(x["history_id"], kind="stable")
    pos = np.rint(store.observations[:, :2]).astype(np.int64)
    nxt = np.rint(store.extras["next_observations"][:, :2]).astype(np.int64)
    acts = np.asarray(store.actions).reshape(-1)
    out = []
    for e in order:
        lo, hi = store.episode_starts[e], store.episode_starts[e] + store.episode_lengths[e]
        task = int(np.asarray(x["task_id"]).reshape(-1)[e])
        out.append(episode_stats(pos[lo], pos[lo:hi], acts[lo:hi], nxt[lo:hi],
                                 float(store.episode_returns[e]),
                                 envs.optimal_return(cfg.env, task)))
    return out


def ad_runs(folder: Path) -> list[Path]:
    """The finished AD runs of a run folder (``ad-w<W>-seed<S>`` with ``trained.json``);
    the runs of one window are one player (mean ± std over their seeds)."""
    runs = sorted(p for p in folder.glob("ad-w*-seed*") if (p / cs.TRAINED_FILE).exists())
    if not runs:
        raise ValueError(f"--folders {folder}: no finished AD run (ad-w<W>-seed<S>/"
                         f"{cs.TRAINED_FILE}) in it")
    return runs


def wall_actions(pos: np.ndarray, size: int) -> np.ndarray:
    """``[N, 5]`` True where the action at cell ``pos[i]`` would walk into a wall."""
    x, y = pos[:, 0], pos[:, 1]
    return np.stack([np.zeros_like(x, bool), y == size - 1, y == 0, x == 0, x == size - 1],
                    axis=1)


@functools.cache
def _training_store(path: str):
    """A run's training data, loaded once for every seed that shares it."""
    from rl_ring.data.store import EpisodeStore

    return EpisodeStore.load(path)


def teacher_forced(run_dir: Path, env: str, histories: int, batch: int = 8) -> dict[str, Any]:
    """The run's action distribution teacher-forced on its own training data: the first
    window of each of the first ``histories`` learning histories long enough for one (so
    its first episode starts from an empty context, as in evaluation), no dropout. Returns,
    over the steps where the source stands on a wall cell, the mean probability the model
    puts on the moves into that wall (``wall_mass``; the sources' own: 0), and its argmax
    accuracy on every step."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import envs
    from agents import registry
    from agents.run import load_checkpoint

    model, tcfg, norm, _ = load_checkpoint(run_dir / "train", attn_impl="blockwise")
    if tcfg.agent != "ad":
        raise ValueError(f"{run_dir}: agent {tcfg.agent!r}; the teacher-forced count is AD's")
    store = _training_store(tcfg.data)
    acfg = tcfg.agent_config
    sampler = registry.get("ad").make_sampler(store, acfg, batch_size=batch, seed=0,
                                              norm=norm)
    w = acfg.window_steps
    hists = np.flatnonzero(sampler.hist_steps >= w)[:histories]
    probe = envs.make(env, task=envs.task_split(env, "test")[0])
    size = int(probe.unwrapped.size)
    probe.close()
    graph, state = nnx.split(model)

    @jax.jit
    def forward(state, tok):
        logits = nnx.merge(graph, state)(tok, deterministic=True)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    mass, on_wall, correct, steps = 0.0, 0, 0, 0
    for i in range(0, len(hists), batch):
        chunk = hists[i:i + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch - len(chunk))])
        tokens = sampler.batch_of({"history": padded,
                                   "start": sampler.hist_start[padded]}).tokens()
        probs = np.asarray(forward(state, {k: jnp.asarray(v) for k, v in tokens.items()}))
        for r, h in enumerate(chunk):
            sel = np.asarray(tokens["loss_mask"][r]).astype(bool)
            rows = sampler.stream[sampler.hist_start[h]:sampler.hist_start[h] + w]
            p = probs[r][sel]
            pos = np.rint(store.observations[rows, :2]).astype(np.int64)
            walls = wall_actions(pos, size)
            at_wall = walls.any(axis=1)
            mass += float((p * walls).sum(axis=1)[at_wall].sum())
            on_wall += int(at_wall.sum())
            acts = np.asarray(store.actions).reshape(-1)[rows]
            correct += int((p.argmax(axis=1) == acts).sum())
            steps += len(rows)
    return {"histories": len(hists), "window_steps": w, "wall_steps": on_wall,
            "wall_mass": mass / max(1, on_wall), "accuracy": correct / max(1, steps)}


def run_window(rdir: Path) -> int:
    """The window (episodes) of a run folder named ``ad-w<W>-seed<S>``."""
    return int(rdir.name.split("-")[1][1:])


def run(args: Args) -> dict[str, Any]:
    import gymnasium as gym

    import agents
    from rl_ring.eval import RandomPolicy

    cs.check_env(args.env)
    if args.env not in cs.GRID_ENVS:
        raise ValueError(f"--env {args.env}: expected a grid family "
                         f"({', '.join(cs.GRID_ENVS)})")
    if args.tasks < 1:
        raise ValueError(f"--tasks {args.tasks}: expected at least 1 held-out task")
    from envs.registry import task_subset

    tasks = task_subset(args.env, "test", args.tasks)
    cfg = cs.main_config(args.env)
    players: list[dict[str, Any]] = []
    for i, learner in enumerate(cfg.learners):
        eps = source_first_episodes(cfg, learner, tasks, seed=args.seed + 3000 + 101 * i)
        players.append({"name": learner, "kind": "source", **summarize(eps)})
    space = gym.spaces.Discrete(gw.NUM_ACTIONS)
    players.append({"name": "random", "kind": "random",
                    **summarize(play_first_episode(RandomPolicy(space), args.env, tasks,
                                                   args.seed))})
    for folder in map(Path, args.folders):
        by_window: dict[int, list[dict[str, Any]]] = {}
        for rdir in ad_runs(folder):
            policy = agents.eval_policy_from_checkpoint(rdir / "train", action_space=space)
            s = summarize(play_first_episode(policy, args.env, tasks, args.seed))
            if args.teacher_forced:
                s["teacher_forced"] = teacher_forced(rdir, args.env, args.teacher_forced)
                cs.log(f"{rdir.name}: teacher-forced {s['teacher_forced']}")
            if args.greedy:
                argmax = agents.eval_policy_from_checkpoint(rdir / "train", action_space=space,
                                                            greedy=True)
                g = summarize(play_first_episode(argmax, args.env, tasks, args.seed))
                s["greedy"] = {k: g[k] for k in (*STATS, "actions")}
            by_window.setdefault(run_window(rdir), []).append({"run": rdir.name, **s})
            cs.log(f"{folder.name}/{rdir.name}: return {s['return']:.3f}, cells "
                   f"{s['cells']:.1f}, wall moves {s['wall_moves']:.3f}")
        for w, per_run in sorted(by_window.items()):
            entry = {"name": f"{folder.name} w{w}", "kind": "ad", "window": w,
                     "folder": str(folder), "episodes": len(tasks), "runs": per_run,
                     **{k: float(np.mean([r[k] for r in per_run])) for k in STATS},
                     "std": {k: float(np.std([r[k] for r in per_run])) for k in STATS}}
            if args.greedy:
                entry["greedy"] = {k: float(np.mean([r["greedy"][k] for r in per_run]))
                                   for k in STATS}
            players.append(entry)
    for p in players:
        cs.log(f"{p['name']}: return {p['return']:.3f}, found {p['found']:.2f}, solved "
               f"{p['solved']:.2f}, cells {p['cells']:.1f}, wall moves "
               f"{p['wall_moves']:.3f}")
    return {"env": args.env, "tasks": len(tasks), "seed": args.seed,
            "players": players}


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_ring.io import save_figure

    players = summary["players"]
    names = [p["name"] for p in players]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, title in zip(axes, ("return", "cells", "wall_moves"),
                              ("return in episode 1", "distinct cells visited",
                               "moves into a wall (fraction)"), strict=True):
        err = [p.get("std", {}).get(key, 0.0) for p in players]
        ax.bar(range(len(players)), [p[key] for p in players], yerr=err,
               color=["tab:green" if p["kind"] == "source" else "tab:gray"
                      if p["kind"] == "random" else "tab:blue" for p in players])
        ax.set_xticks(range(len(players)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(title)
    fig.suptitle(f"{summary['env']}: episode 1 from an empty context, "
                 f"{summary['tasks']} held-out tasks")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.grid_first_episode [options]``."""
    import tyro

    from rl_ring.io import check_results, write_json

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.grid_first_episode", description=__doc__)
    out = Path(args.out)
    name = f"{RESULTS}_{args.env.replace('-', '_')}"
    try:
        paths = [out / f"{name}.json", out / f"{name}.png"]
        check_results(paths, workdir=None, overwrite=args.overwrite,
                      what="grid_first_episode's results")
        summary = run(args)
        out.mkdir(parents=True, exist_ok=True)
        plot(summary, paths[1])
        summary["files"] = {"plot": paths[1].name}
        write_json(summary, paths[0])
    except (ValueError, OSError) as err:
        print(f"grid_first_episode: {err}", file=sys.stderr)
        return 2
    print(json.dumps({p["name"]: {k: round(p[k], 3) for k in STATS}
                      for p in summary["players"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
