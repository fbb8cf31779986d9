"""Search against exploitation in the played grid evaluations of ``context_scaling`` runs.

A final return mixes two abilities: finding the goal (search) and going back to it every
episode once found (exploitation). For every finished grid run in the given run folders,
and each of its evaluations (``eval/``: its own window; ``eval-ctx<C>/``: played with C
episodes of context, ``experiments.context_scaling_zeroshot``), this splits them on every
held-out task: the fraction of tasks whose goal was reached at least once by episode k, and
the mean return of the episodes after a task's first success.

Per *stage* (Dark Room hard: ``goal``, a return >= 1; Key-to-Door: ``key``, a return >= 1,
and ``door``, the key then the door: a return of 2), over each task's episodes
(:func:`stage_stats`): ``ever`` (the fraction of tasks where some episode reached it),
``first`` (the median episode of the first time), ``after`` (the fraction of the episodes
after the first time that reach it again, averaged over tasks), ``carry`` (P(reached in
episode e + 1 | reached in e)), ``fresh`` (P(reached in e + 1 | not in e)) and ``rate``.
With ``--sources`` the same for each source's own history on the same held-out tasks and
for the folders' random baseline (``baseline_random/report.json``). ::

    python -m experiments.context_scaling_play --folders runs/context_scaling/darkroom-hard \
        runs/context_scaling/darkroom-hard-steps150-batch8-lr0.0001-warmup10-init16

Writes ``results/context_scaling_play[_<tag>].json`` + ``.png`` (mean ± std over training
seeds).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments import context_scaling as cs

RESULTS = "context_scaling_play"
BY = (5, 10, 20, 40, 80, 160, 256)
"""Episodes k of the "found by episode k" fractions (those within the evaluation)."""
STAGES = {"darkroom-hard": (("goal", 1.0),), "keydoor": (("key", 1.0), ("door", 2.0))}
"""Each grid family's stages and the return that marks one reached."""
STAGE_STATS = ("ever", "first", "after", "carry", "fresh", "rate")


@dataclass(frozen=True)
class Args:
    """Options of the search / exploitation split."""

    folders: tuple[str, ...] = ("runs/context_scaling/darkroom-hard",)
    """Grid run folders of ``experiments.context_scaling`` (every finished run in each)."""
    out: str = "results"
    """Directory of the JSON / PNG results."""
    sources: bool = False
    """Also count each source's own history (as many episodes, the same held-out tasks) and
    the first folder's random baseline."""
    tag: str = ""
    """Suffix of the result files' names."""
    overwrite: bool = False
    """Replace result files already in --out."""


def stage_stats(returns: np.ndarray, level: float) -> dict[str, float | None]:
    """The per-stage counts of the module docstring for ``returns [tasks, T]`` (episodes in
    context order), a stage reached where an episode's return is >= ``level`` - 0.5 (returns
    are sums of unit rewards). ``first`` is 1-based; ``first`` / ``after`` / ``carry`` /
    ``fresh`` are None where no task (or episode) qualifies."""
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


def stages(env: str, returns: np.ndarray) -> dict[str, dict[str, float | None]]:
    """:func:`stage_stats` of each stage of ``env`` (:data:`STAGES`)."""
    return {name: stage_stats(returns, level) for name, level in STAGES[env]}


def split(returns: np.ndarray, by: tuple[int, ...] = BY) -> dict[str, Any]:
    """``returns [tasks, episodes]`` -> the fraction of tasks with a positive return by
    episode k (for each k of ``by`` within the episodes; ``found_curve``: every k), the mean
    return of the episodes after each task's first positive one (tasks that had one; None
    when none did), and the final return (last 10% of the episodes)."""
    tasks, e = returns.shape
    hit = returns > 0
    first = np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, e + 1)  # 1-based episode
    found = np.array([(first <= k).mean() for k in range(1, e + 1)])
    after = [returns[i, first[i]:].mean() for i in range(tasks) if first[i] < e]
    last = max(1, int(np.ceil(cs.FINAL_FRACTION * e)))
    return {"found_by": {str(k): float(found[k - 1]) for k in by if k <= e},
            "found_curve": found.tolist(),
            "after_first": float(np.mean(after)) if after else None,
            "tasks_after_first": len(after),
            "final": float(returns[:, e - last:].mean())}


def analyse(folder: Path) -> list[dict[str, Any]]:
    """One entry per finished run and evaluation in ``folder``."""
    rows = []
    records = sorted(folder.glob("*/record.json"))
    if not records:
        raise ValueError(f"--folders {folder}: no finished context_scaling run (*/record.json)")
    for rec_path in records:
        record = json.loads(rec_path.read_text())
        cfg = cs.record_config(record)
        if cfg.env not in cs.GRID_ENVS:
            raise ValueError(f"{rec_path}: a {cfg.env} run; the split is for the grids "
                             f"({', '.join(cs.GRID_ENVS)})")
        for report_path in sorted(rec_path.parent.glob("eval*/report.json")):
            report = json.loads(report_path.read_text())
            returns = cs.report_returns(report, cs.heldout_tasks(cfg), cfg.eval_episodes)
            rows.append({"folder": str(folder), "run": rec_path.parent.name,
                         "agent": record["agent"], "window": record["window"],
                         "seed": record["seed"], "eval": report_path.parent.name,
                         "context_steps": report["config"].get("context_steps"),
                         **split(returns), "stages": stages(cfg.env, returns)})
    return rows


def baselines(folder: Path, seed: int = 0) -> list[dict[str, Any]]:
    """The sources' own histories (as many episodes as the folder's runs were evaluated on,
    the same held-out tasks) and the folder's random baseline, counted as the runs are."""
    records = sorted(folder.glob("*/record.json"))
    if not records:
        raise ValueError(f"--folders {folder}: no finished context_scaling run (*/record.json)")
    cfg = cs.record_config(json.loads(records[0].read_text()))
    tasks = cs.heldout_tasks(cfg)
    out = []
    for i, learner in enumerate(cfg.learners):
        returns = cs.source_returns(cfg, learner, tasks, seed + 5000 + 101 * i)
        out.append({"name": learner, "kind": "source", **split(returns),
                    "stages": stages(cfg.env, returns)})
    random_report = folder / "baseline_random" / "report.json"
    if random_report.exists():
        report = json.loads(random_report.read_text())
        returns = cs.report_returns(report, tasks, int(report["trials"]))
        out.append({"name": "random", "kind": "random", "episodes": int(report["trials"]),
                    **split(returns), "stages": stages(cfg.env, returns)})
    return out


def group(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds of each (folder, agent, window, evaluation)."""
    out: dict[tuple, list] = {}
    for r in rows:
        out.setdefault((r["folder"], r["agent"], r["window"], r["eval"]), []).append(r)

    def stat(xs):
        xs = np.array([x for x in xs if x is not None], float)
        return {"mean": float(xs.mean()) if len(xs) else None,
                "std": float(xs.std()) if len(xs) else None,  # ddof=0, as context_scaling
                "per_seed": xs.tolist()}

    return [{"folder": f, "agent": a, "window": w, "eval": ev,
             "seeds": [r["seed"] for r in rs],
             "found_by": {k: stat([r["found_by"][k] for r in rs]) for k in rs[0]["found_by"]},
             "after_first": stat([r["after_first"] for r in rs]),
             "final": stat([r["final"] for r in rs]),
             "stages": {st: {k: stat([r["stages"][st][k] for r in rs]) for k in STAGE_STATS}
                        for st in rs[0]["stages"]},
             "found_curve": np.mean([r["found_curve"] for r in rs], axis=0).tolist()}
            for (f, a, w, ev), rs in out.items()]


def plot(groups: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_ring.io import save_figure

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for g in groups:
        x = np.arange(1, len(g["found_curve"]) + 1)
        after = g["after_first"]["mean"]
        label = (f"{Path(g['folder']).name} {g['agent']}-w{g['window']} {g['eval']} "
                 f"(after first: {after:.2f})" if after is not None else "")
        ax.plot(x, g["found_curve"], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("in-context episode")
    ax.set_ylabel("held-out tasks whose goal was reached")
    ax.set_title("search: goal found by episode k (mean over seeds)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.context_scaling_play [options]``."""
    import tyro

    from rl_ring.io import check_results, write_json

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.context_scaling_play", description=__doc__)
    try:
        path = Path(args.out) / (RESULTS + (f"_{args.tag}" if args.tag else ""))
        check_results([path.with_suffix(".json"), path.with_suffix(".png")],
                      workdir=args.folders[0] if args.folders else "runs",
                      overwrite=args.overwrite, what="the search/exploitation split")
        rows = [r for f in args.folders for r in analyse(Path(f))]
        groups = group(rows)
        base = baselines(Path(args.folders[0])) if args.sources else []
        summary = {"folders": list(args.folders), "groups": groups, "runs": rows,
                   "baselines": base,
                   "files": {"plot": plot(groups, path.with_suffix(".png")).name}}
        write_json(summary, path.with_suffix(".json"))
    except (ValueError, OSError) as err:
        print(f"context_scaling_play: {err}", file=sys.stderr)
        return 2
    for g in groups:
        found = ", ".join(f"{k}: {v['mean']:.2f}" for k, v in g["found_by"].items())
        after = g["after_first"]["mean"]
        print(f"{Path(g['folder']).name} {g['agent']}-w{g['window']} {g['eval']} "
              f"({len(g['seeds'])} seeds): found by {found}; after first "
              f"{'-' if after is None else f'{after:.3f}'}; final {g['final']['mean']:.3f}")
        print("    " + _stage_line({st: {k: v["mean"] for k, v in d.items()}
                                    for st, d in g["stages"].items()}))
    for b in base:
        print(f"{b['name']}: final {b['final']:.3f}; " + _stage_line(b["stages"]))
    return 0


def _stage_line(st: dict[str, dict[str, float | None]]) -> str:
    return "; ".join(f"{name}: " + ", ".join(f"{k} {'-' if v is None else f'{v:.2f}'}"
                                             for k, v in d.items()) for name, d in st.items())


if __name__ == "__main__":
    sys.exit(main())
