"""A perfectly trained DPT on Dark Room hard: what its online policy can reach at best.

DPT learns the distribution of a query state's *optimal action* given its in-context data.
Trained to the minimum of its loss, it acts by sampling, at every step, from

    P(a | s, context) = sum_g P(g | context) P_label(a | s, g),

the optimal-action labels averaged over the goals the context still allows. On Dark Room
hard (17 x 17, the start in the centre, 20 steps an episode, reward 1 on the first arrival
at the goal) a goal is excluded once a cell has been visited without reward, and known once
a reward is in context. This script plays that policy exactly (no network) on every
held-out goal, 256 episodes in one context, with

* the labels: ``x-first`` (rl_ring's recorded shortest-path action,
  :func:`envs.gridworld.step_towards`: along x, then y) or ``any-shortest`` (uniform over
  the actions that shorten the way);
* the context: the last W episodes, a quarter of W sliding out of a full context (the
  trained DPT's evaluation), or every episode (``--windows 256``);
* the prior: uniform over the room's 288 goals (a model that generalises to held-out
  goals);

next to the trained DPT runs of the given run folders (``experiments.context_scaling``),
through the same search / exploitation split (``experiments.context_scaling_play``). ::

    python -m experiments.dpt_grid_ideal --folders runs/context_scaling/darkroom-hard \\
        runs/context_scaling/darkroom-hard-dptrandom

Writes ``results/dpt_grid_ideal.json`` + ``.png`` (mean ± std over evaluation seeds).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs import gridworld as gw
from envs.registry import IN_CONTEXT
from experiments import context_scaling as cs
from experiments import context_scaling_play as csplay

RESULTS = "dpt_grid_ideal"
ENV = "darkroom-hard"
SIZE = IN_CONTEXT[ENV].kwargs["size"]
LABELS = ("x-first", "any-shortest")


@dataclass(frozen=True)
class Args:
    """Options of the perfectly trained DPT's play."""

    windows: tuple[int, ...] = (16, 256)
    """Context windows in episodes (the last W; a quarter of W slides out of a full one)."""
    labels: tuple[str, ...] = LABELS
    """Optimal-action labels: x-first (rl_ring's), any-shortest (uniform over shortest)."""
    episodes: int = 256
    """In-context episodes per held-out goal."""
    seeds: int = 5
    """Evaluation seeds (every held-out goal played once per seed)."""
    folders: tuple[str, ...] = ()
    """context_scaling run folders whose finished DPT runs are reported beside."""
    out: str = "results"
    """Directory of the JSON / PNG results."""
    overwrite: bool = False
    """Replace result files already in --out."""


def label_table(labels: str, size: int = SIZE) -> np.ndarray:
    """``[cells, goals, 5]``: the label distribution of the optimal action in cell s for
    goal g (cells and goals by cell id)."""
    if labels not in LABELS:
        raise ValueError(f"--labels {labels!r}: expected one of {', '.join(LABELS)}")
    n = size * size
    xy = np.array([gw.cell_xy(c, size) for c in range(n)])
    table = np.zeros((n, n, len(gw.MOVES)))
    if labels == "x-first":
        best = np.array([[gw.step_towards(tuple(xy[s]), tuple(xy[g])) for g in range(n)]
                         for s in range(n)])
        np.put_along_axis(table, best[..., None], 1.0, axis=2)
        return table
    dist = np.abs(xy[:, None, :] - xy[None, :, :]).sum(axis=2)  # [cells, goals]
    for a in range(1, len(gw.MOVES)):
        after = np.clip(xy + gw.MOVES[a], 0, size - 1)
        table[:, :, a] = np.abs(after[:, None, :] - xy[None, :, :]).sum(axis=2) < dist
    table[:, :, 0] = dist == 0  # on the goal: stay
    return table / table.sum(axis=2, keepdims=True)


def action_probs(table: np.ndarray, pos: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[rows, 5]``: sum over goals of ``weights [rows, goals]`` (normalised) times the
    labels of each row's cell ``pos [rows]``."""
    w = weights / weights.sum(axis=1, keepdims=True)
    return np.einsum("ng,nga->na", w, table[pos])


def play(goals: list[int], table: np.ndarray, *, window: int, episodes: int,
         seed: int) -> dict[str, Any]:
    """Plays the perfectly trained DPT on ``goals`` (one row each) for ``episodes``
    episodes in one context of the last ``window`` episodes. Returns ``returns [rows,
    episodes]`` and, per episode, the mean number of distinct cells visited."""
    rng = np.random.default_rng(seed)
    n, cells = len(goals), SIZE * SIZE
    steps = cs.episode_steps(ENV)
    xy = np.array([gw.cell_xy(c, SIZE) for c in range(cells)])
    goal = np.asarray(goals)
    start = gw.cell_id(*gw.centre(SIZE), SIZE)
    prior = np.ones((n, cells))
    prior[:, start] = 0.0  # the centre is not a goal
    visited = np.zeros((episodes, n, cells), bool)  # cells seen without reward, by episode
    rewarded = np.zeros((episodes, n), bool)  # whether the goal's reward was seen, by episode
    seen = np.zeros((n, cells), np.int64)  # context episodes that visited each cell
    known = np.zeros(n, np.int64)  # context episodes with the goal's reward
    returns = np.zeros((n, episodes))
    # the trained DPT's evaluation slide (context_scaling's _evaluation), in episodes
    first, slide = 0, max(1, int(window * cs.main_config(ENV).slide_fraction))
    rows = np.arange(n)

    def visit(e: int, where: np.ndarray, at: np.ndarray) -> None:
        new = ~visited[e, where, at]
        visited[e, where[new], at[new]] = True
        seen[where[new], at[new]] += 1

    for e in range(episodes):
        if e - first >= window:  # a full context: the oldest quarter slides out
            seen -= visited[first:first + slide].sum(axis=0)
            known -= rewarded[first:first + slide].sum(axis=0)
            first += slide
        pos = np.full(n, start)
        reached = np.zeros(n, bool)
        visit(e, rows, pos)
        for _ in range(steps):
            weights = np.where(seen > 0, 0.0, prior)
            has = known > 0  # the reward in context: the goal is that cell
            weights[has] = 0.0
            weights[has, goal[has]] = 1.0
            p = action_probs(table, pos, weights)
            a = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
            x, y = np.clip(xy[pos] + gw.MOVES[a], 0, SIZE - 1).T  # walls stop (gw.move)
            pos = y * SIZE + x  # gw.cell_id
            arrive = (pos == goal) & ~reached
            returns[arrive, e] = 1.0
            rewarded[e, arrive] = True
            known[arrive] += 1
            reached |= arrive
            visit(e, rows[~arrive], pos[~arrive])
    return {"returns": returns, "cells_visited": visited.sum(axis=2).mean(axis=1)}


def trained_runs(folders: tuple[str, ...]) -> list[dict[str, Any]]:
    """The search / exploitation split of every finished DPT run in ``folders``."""
    rows = []
    for folder in folders:
        rows += [r for r in csplay.analyse(Path(folder)) if r["agent"] == "dpt"
                 and r["eval"] == "eval"]
    return csplay.group(rows) if rows else []


def run(args: Args) -> dict[str, Any]:
    for name, values in (("--windows", args.windows), ("--episodes", (args.episodes,)),
                         ("--seeds", (args.seeds,))):
        if not values or min(values) < 1:
            raise ValueError(f"{name} {' '.join(map(str, values))}: expected integers >= 1")
    goals = cs.heldout_tasks(cs.main_config(ENV))
    configs = []
    for labels in args.labels:
        table = label_table(labels)
        for w in args.windows:
            per_seed = [play(goals, table, window=w, episodes=args.episodes, seed=s)
                        for s in range(args.seeds)]
            splits = [csplay.split(p["returns"]) for p in per_seed]
            finals = np.array([s["final"] for s in splits])
            after = np.array([s["after_first"] for s in splits], float)
            found = np.array([s["found_curve"] for s in splits])
            curves = np.array([p["returns"].mean(axis=0) for p in per_seed])
            configs.append({
                "labels": labels, "window": w,
                "final": {"mean": float(finals.mean()), "std": float(finals.std()),
                          "per_seed": finals.tolist()},
                "after_first": float(np.nanmean(after)),
                "found_by": {k: float(np.mean([s["found_by"][k] for s in splits]))
                             for k in splits[0]["found_by"]},
                "found_curve": found.mean(axis=0).tolist(),
                "curve": curves.mean(axis=0).tolist(),
                "first_episode_cells": float(np.mean([p["cells_visited"][0]
                                                      for p in per_seed]))})
            c = configs[-1]
            cs.log(f"{labels} w{w}: final {c['final']['mean']:.3f} +- {c['final']['std']:.3f}"
                   f", found by 40 / 256: {c['found_by'].get('40', float('nan')):.2f} / "
                   f"{c['found_by'].get(str(args.episodes), float('nan')):.2f}, after first "
                   f"{c['after_first']:.2f}, cells in episode 1: "
                   f"{c['first_episode_cells']:.1f}")
    return {"env": ENV, "goals": len(goals), "episodes": args.episodes, "seeds": args.seeds,
            "prior": "uniform over the 288 goals", "configs": configs,
            "trained": trained_runs(args.folders)}


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_ring.io import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for c in summary["configs"]:
        label = f"ideal DPT, {c['labels']}, {c['window']} eps"
        x = np.arange(1, len(c["curve"]) + 1)
        axes[0].plot(x, c["curve"], label=label)
        axes[1].plot(x, c["found_curve"], label=label)
    for t in summary["trained"]:
        x = np.arange(1, len(t["found_curve"]) + 1)
        axes[1].plot(x, t["found_curve"], "--", label=f"trained DPT, {Path(t['folder']).name}")
    axes[0].set(xlabel="in-context episode", ylabel="return", title="return per episode")
    axes[1].set(xlabel="in-context episode", ylabel="held-out goals found",
                title="goals found by episode k")
    axes[1].legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.dpt_grid_ideal [options]``."""
    import tyro

    from rl_ring.io import check_results, write_json

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.dpt_grid_ideal", description=__doc__)
    out = Path(args.out)
    try:
        paths = [out / f"{RESULTS}.json", out / f"{RESULTS}.png"]
        check_results(paths, workdir=None, overwrite=args.overwrite,
                      what="dpt_grid_ideal's results")
        summary = run(args)
        out.mkdir(parents=True, exist_ok=True)
        plot(summary, paths[1])
        summary["files"] = {"plot": paths[1].name}
        write_json(summary, paths[0])
    except (ValueError, OSError) as err:
        print(f"dpt_grid_ideal: {err}", file=sys.stderr)
        return 2
    print(json.dumps({c["labels"] + f"-w{c['window']}": c["final"] for c in
                      summary["configs"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
