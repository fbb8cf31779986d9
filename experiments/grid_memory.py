"""What grid in-context models carry from one episode to the next: the goal, the key, the door.

A model that learns in context finds a rewarding cell once and goes back to it in the
episodes after. This script reads the evaluations ``experiments.context_scaling`` already
wrote (each finished AD or DPT run's ``eval/report.json``: ``T`` episodes per held-out task in one
context; no model is run) and the random baseline beside them, plays the sources' own
``T``-episode histories on the same held-out tasks, and counts per stage (Dark Room hard:
``goal``, a return >= 1; Key-to-Door: ``key``, a return >= 1, and ``door``, the key then the
door: a return of 2), over each task's ``T`` episodes:

* ``ever``: the fraction of tasks where some episode reached the stage;
* ``first``: the median episode (1-based) of the first time, over those tasks;
* ``after``: the mean over those tasks of the fraction of the episodes *after* the first
  time that reach the stage again (1: found once, never lost);
* ``carry``: P(reached in episode e + 1 | reached in episode e), over all tasks and episodes;
* ``fresh``: P(reached in episode e + 1 | not reached in episode e);
* ``rate``: the fraction of all episodes that reach it.

::

    python -m experiments.grid_memory --env keydoor --folders \\
        runs/context_scaling/keydoor-hist128-histories2000-eval158-dagger16r4

Writes ``results/grid_memory_<env>[_<tag>].json`` + ``.png`` (each agent and window of a
folder: mean ± std over its training seeds).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments import context_scaling as cs

RESULTS = "grid_memory"
STAGES = {"darkroom-hard": (("goal", 1.0),), "keydoor": (("key", 1.0), ("door", 2.0))}
STATS = ("ever", "first", "after", "carry", "fresh", "rate")


@dataclass(frozen=True)
class Args:
    """Options of the episode-to-episode memory count."""

    env: str = "keydoor"
    """Grid family: darkroom-hard or keydoor."""
    folders: tuple[str, ...] = ()
    """context_scaling run folders whose finished runs' evaluations (``<agent>-w<W>-seed<S>``:
    AD, DPT) are counted (and the first folder's random baseline,
    ``baseline_random/report.json``)."""
    sources: bool = True
    """Also play each source (``learners`` of the family's configuration) for the same number
    of episodes on the evaluated held-out tasks."""
    seed: int = 0
    """Seed of the sources' histories."""
    tag: str = ""
    """Suffix of the result files' names."""
    out: str = "results"
    """Directory of the JSON / PNG results."""
    overwrite: bool = False
    """Replace result files already in --out."""


# ---------------------------------------------------------------------- statistics
def stage_stats(returns: np.ndarray, level: float) -> dict[str, float | None]:
    """The counts of the module docstring for ``returns`` ``[tasks, T]`` (one row per task,
    episodes in context order) and a stage reached when an episode's return is >= ``level``
    - 0.5 (returns are sums of unit rewards). ``first`` / ``after`` / ``carry`` / ``fresh``
    are None when no task (or episode) qualifies."""
    r = np.asarray(returns, np.float64)
    if r.ndim != 2 or r.shape[1] < 2:
        raise ValueError(f"stage_stats: expected returns [tasks, episodes >= 2], got shape "
                         f"{r.shape}")
    hit = r >= level - 0.5
    t = hit.shape[1]
    ever = hit.any(axis=1)
    first = np.where(ever, hit.argmax(axis=1), t)
    later = [hit[i, first[i] + 1:].mean() for i in range(len(hit)) if first[i] < t - 1]
    now, nxt = hit[:, :-1], hit[:, 1:]

    def ratio(num: int, den: int) -> float | None:
        return float(num / den) if den else None

    return {"ever": float(ever.mean()),
            "first": float(np.median(first[ever]) + 1) if ever.any() else None,
            "after": float(np.mean(later)) if later else None,
            "carry": ratio(int((now & nxt).sum()), int(now.sum())),
            "fresh": ratio(int((~now & nxt).sum()), int((~now).sum())),
            "rate": float(hit.mean())}


def memory_stats(env: str, returns: np.ndarray) -> dict[str, dict[str, float | None]]:
    """:func:`stage_stats` for each stage of ``env`` (:data:`STAGES`)."""
    return {name: stage_stats(returns, level) for name, level in STAGES[env]}


def report_returns(path: Path) -> np.ndarray:
    """``[rows, T]`` returns of an ``rl_ring.eval`` report (one row per seed and env row,
    trials in order); every row must hold the same trials, all ``ok``."""
    try:
        report = json.loads(path.read_text())
        episodes = report["episodes"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable rl_ring evaluation report ({err})") from err
    rows: dict[tuple[int, int], dict[int, float]] = {}
    for e in episodes:
        if e.get("status") != "ok":
            raise ValueError(f"{path}: episode seed {e.get('seed')} row {e.get('env_index')} "
                             f"trial {e.get('trial')} has status {e.get('status')!r}; the "
                             f"count needs every episode ok")
        rows.setdefault((int(e["seed"]), int(e["env_index"])), {})[int(e["trial"])] = \
            float(e["return"])
    if not rows:
        raise ValueError(f"{path}: the report has no episodes")
    lengths = {len(v) for v in rows.values()}
    if len(lengths) != 1 or any(sorted(v) != list(range(len(v))) for v in rows.values()):
        raise ValueError(f"{path}: rows hold different trials ({sorted(lengths)} episodes); "
                         f"expected the same 0..T-1 in every row")
    return np.array([[v[k] for k in range(len(v))] for _, v in sorted(rows.items())])


def report_tasks(path: Path) -> list[int]:
    """The task of each row of :func:`report_returns`, in the same order."""
    report = json.loads(path.read_text())
    tasks = {(int(e["seed"]), int(e["env_index"])): int(e["task"])
             for e in report["episodes"]}
    return [tasks[k] for k in sorted(tasks)]


def source_returns(cfg: cs.ScalingConfig, learner: str, tasks: list[int], episodes: int,
                   seed: int) -> np.ndarray:
    """``[tasks, episodes]`` returns of one ``learner`` history per task."""
    store = cs.source_histories(cfg.replace(history_episodes=episodes), learner, tasks,
                                seed=seed)
    x = store.episode_extras
    hist = np.asarray(x["history_id"]).reshape(-1)
    order = np.lexsort((np.asarray(x["episode_in_history"]).reshape(-1), hist))
    return np.asarray(store.episode_returns, np.float64)[order].reshape(len(tasks), episodes)


# ---------------------------------------------------------------------- players
def _finished_runs(folder: Path) -> list[Path]:
    runs = sorted(p for p in folder.glob("*-w*-seed*")
                  if (p / cs.TRAINED_FILE).exists() and (p / "eval" / "report.json").exists())
    if not runs:
        raise ValueError(f"--folders {folder}: no finished run with an evaluation "
                         f"(<agent>-w<W>-seed<S>/{cs.TRAINED_FILE} and eval/report.json) "
                         f"in it")
    return runs


def run(args: Args) -> dict[str, Any]:
    cs.check_env(args.env)
    if args.env not in STAGES:
        raise ValueError(f"--env {args.env}: expected a grid family ({', '.join(STAGES)})")
    if not args.folders:
        raise ValueError("--folders: give at least one context_scaling run folder")
    folders = [Path(f) for f in args.folders]
    for f in folders:
        if not f.is_dir():
            raise ValueError(f"--folders {f}: not a directory")
    players: list[dict[str, Any]] = []
    tasks: list[int] | None = None
    episodes = None
    for folder in folders:
        by_window: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for rdir in _finished_runs(folder):
            path = rdir / "eval" / "report.json"
            r = report_returns(path)
            t = report_tasks(path)
            if tasks is None:
                tasks, episodes = t, r.shape[1]
            elif (t, r.shape[1]) != (tasks, episodes):
                raise ValueError(f"{path}: {len(t)} tasks x {r.shape[1]} episodes, other "
                                 f"than the first report's {len(tasks)} x {episodes} (or "
                                 f"other tasks); compare evaluations of the same tasks")
            agent, w = rdir.name.split("-")[:2]
            by_window.setdefault((agent, int(w[1:])), []).append(
                {"run": rdir.name, **memory_stats(args.env, r)})
        for (agent, w), per_run in sorted(by_window.items()):
            players.append({"name": f"{folder.name} {agent}-w{w}", "kind": agent, "window": w,
                            "folder": str(folder), "runs": per_run,
                            **_over_runs(args.env, per_run)})
    random_report = folders[0] / "baseline_random" / "report.json"
    if random_report.exists():
        r = report_returns(random_report)
        players.append({"name": "random", "kind": "random", "episodes": r.shape[1],
                        **memory_stats(args.env, r)})
    if args.sources:
        cfg = cs.main_config(args.env)
        for i, learner in enumerate(cfg.learners):
            r = source_returns(cfg, learner, tasks, episodes, seed=args.seed + 5000 + 101 * i)
            players.append({"name": learner, "kind": "source", **memory_stats(args.env, r)})
    for p in players:
        cs.log(f"{p['name']}: " + "; ".join(
            f"{s}: " + ", ".join(f"{k} {_fmt(p[s][k])}" for k in STATS)
            for s, _ in STAGES[args.env]))
    return {"env": args.env, "tasks": len(tasks), "episodes": episodes,
            "stages": {s: lvl for s, lvl in STAGES[args.env]}, "players": players}


def _over_runs(env: str, per_run: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean (and ``std`` beside it, over runs) of each stage's counts; None stays None."""
    out: dict[str, Any] = {}
    for s, _ in STAGES[env]:
        out[s] = {}
        for k in STATS:
            vals = [r[s][k] for r in per_run if r[s][k] is not None]
            out[s][k] = float(np.mean(vals)) if vals else None
            out[s][f"{k}_std"] = float(np.std(vals)) if vals else None
    return out


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_ring.io import save_figure

    players = summary["players"]
    stages = list(summary["stages"])
    keys = ("ever", "after", "carry", "fresh")
    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 4.2), squeeze=False)
    width = 0.8 / len(players)
    for ax, s in zip(axes[0], stages, strict=True):
        for j, p in enumerate(players):
            vals = [p[s][k] if p[s][k] is not None else 0.0 for k in keys]
            ax.bar(np.arange(len(keys)) + (j - (len(players) - 1) / 2) * width, vals, width,
                   label=p["name"])
        ax.set_xticks(range(len(keys)), ["reached ever", "reached again\nafter the first",
                                         "P(next | this)", "P(next | not this)"])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{s} (return >= {summary['stages'][s]:g})")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{summary['env']}: what carries from one in-context episode to the next "
                 f"({summary['tasks']} held-out tasks x {summary['episodes']} episodes)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.grid_memory [options]``."""
    import tyro

    from rl_ring.io import check_results, write_json

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.grid_memory", description=__doc__)
    out = Path(args.out)
    name = f"{RESULTS}_{args.env.replace('-', '_')}" + (f"_{args.tag}" if args.tag else "")
    try:
        paths = [out / f"{name}.json", out / f"{name}.png"]
        check_results(paths, workdir=None, overwrite=args.overwrite,
                      what="grid_memory's results")
        summary = run(args)
        out.mkdir(parents=True, exist_ok=True)
        plot(summary, paths[1])
        summary["files"] = {"plot": paths[1].name}
        write_json(summary, paths[0])
    except (ValueError, OSError) as err:
        print(f"grid_memory: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
