"""Search against exploitation in the played grid evaluations of ``context_scaling`` runs.

A final return mixes two abilities: finding the goal (search) and going back to it every
episode once found (exploitation). For every finished grid run in the given run folders,
and each of its evaluations (``eval/``: its own window; ``eval-ctx<C>/``: played with C
episodes of context, ``experiments.context_scaling_zeroshot``), this splits them on every
held-out task: the fraction of tasks whose goal was reached at least once by episode k, and
the mean return of the episodes after a task's first success. ::

    python -m experiments.context_scaling_play --folders runs/context_scaling/darkroom-hard \
        runs/context_scaling/darkroom-hard-steps150-batch8-lr0.0001-warmup10-init16

Writes ``results/context_scaling_play.json`` + ``.png`` (mean ± std over training seeds).
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


@dataclass(frozen=True)
class Args:
    """Options of the search / exploitation split."""

    folders: tuple[str, ...] = ("runs/context_scaling/darkroom-hard",)
    """Grid run folders of ``experiments.context_scaling`` (every finished run in each)."""
    out: str = "results"
    """Directory of the JSON / PNG results."""
    overwrite: bool = False
    """Replace result files already in --out."""


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
                         **split(returns)})
    return rows


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
        path = Path(args.out) / RESULTS
        check_results([path.with_suffix(".json"), path.with_suffix(".png")],
                      workdir=args.folders[0] if args.folders else "runs",
                      overwrite=args.overwrite, what="the search/exploitation split")
        rows = [r for f in args.folders for r in analyse(Path(f))]
        groups = group(rows)
        summary = {"folders": list(args.folders), "groups": groups, "runs": rows,
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
