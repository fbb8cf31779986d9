"""Search or exploitation: where the grid models' loss sits in a learning history.

A source's learning history on Dark Room hard has two phases: the *search*, the episodes up
to and including the first that reaches the goal (reward only on first arrival), and the
*solved* phase after it, where the source walks back to the goal it found. Long context is
for the search (which cells were already visited, episodes ago); the solved phase needs only
the last successful episode. This script measures, for every finished AD run of a grid
context-scaling work folder:

1. **What training weighs.** The fraction of the action targets of training windows that
   fall in search episodes, over every episode-aligned window start of every training
   history (with fixed-length episodes the step-aligned sampler's windows give the same
   share up to their partial first and last episodes), per window length.
2. **What the models learnt of each phase.** Fresh learning histories of each source on
   every held-out task (the sources' own seeds differ from the training data's), scored
   teacher-forced (recorded actions in context, no dropout) with each run's windows cut back
   to back (``context_scaling_floor.model_nll``): loss and argmax accuracy on the search
   steps and on the solved steps, and by episode position in the history.

Usage::

    python -m experiments.context_scaling_phases --workdir runs/context_scaling/darkroom-hard

Writes ``<out>/context_scaling_phases.json`` and ``.png``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = "context_scaling_phases"
POSITIONS = ((0, 16), (16, 64), (64, 256))
"""Episode positions in a history (0-based, half-open) of the by-position table."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class Args:
    """Options of the search/solved analysis."""

    workdir: str = "runs/context_scaling/darkroom-hard"
    """The context-scaling work folder of a grid family (holds data-ad/ and
    ad-w<W>-seed<S>/ runs)."""
    env: str = "darkroom-hard"
    """Grid family of the runs (fixed-length episodes: darkroom-hard)."""
    tasks: int = 0
    """Held-out tasks the fresh histories run on (0: all of them)."""
    batch: int = 8
    """Windows per forward pass."""
    seed: int = 0
    """Seed of the fresh histories (each source adds its index x 101)."""
    out: str = "results"
    """Directory of the JSON / PNG."""
    overwrite: bool = False
    """Replace result files already in --out."""


# ---------------------------------------------------------------------- phases
def search_mask(store, episodes: int) -> np.ndarray:
    """``[histories, episodes]`` True for search episodes
    (:func:`experiments.context_scaling.search_episodes`), histories in the order of their
    ids, episodes in history order."""
    from experiments.context_scaling import search_episodes

    x = store.episode_extras
    order = np.lexsort((x["episode_in_history"], x["history_id"]))
    search = search_episodes(store.episode_returns, x["history_id"], x["episode_in_history"])
    return search[order].reshape(-1, episodes)


def first_success(search: np.ndarray) -> np.ndarray:
    """Per history, the 1-based episode of its first success (its search's length; the
    history's length when it never succeeds)."""
    return search.sum(axis=1)


def search_weight(search: np.ndarray, window: int) -> float:
    """The fraction of training targets in search episodes over every start of a
    ``window``-episode window in every history (fixed-length episodes: a step-aligned window
    start is as likely at every step, which for whole-episode counts weighs every episode
    start alike up to the window's partial first and last episode)."""
    h, e = search.shape
    if window > e:
        raise ValueError(f"window {window} is longer than the histories ({e} episodes)")
    c = np.concatenate([np.zeros((h, 1)), np.cumsum(search, axis=1)], axis=1)
    per_start = c[:, window:] - c[:, :-window]  # [h, e - window + 1] search episodes
    return float(per_start.sum() / (per_start.size * window))


def phase_scores(nll: np.ndarray, correct: np.ndarray, search: np.ndarray,
                 episode_steps: int) -> dict[str, Any]:
    """Loss and accuracy per phase and per episode position; ``nll`` / ``correct`` are
    ``[histories, steps]``, ``search`` ``[histories, episodes]``."""
    step_search = np.repeat(search, episode_steps, axis=1)
    if step_search.shape != nll.shape:
        raise ValueError(f"scores {nll.shape} do not match {search.shape} episodes of "
                         f"{episode_steps} steps")
    out: dict[str, Any] = {}
    for name, sel in (("search", step_search), ("solved", ~step_search),
                      ("all", np.ones_like(step_search))):
        out[name] = ({"nll": float(nll[sel].mean()), "accuracy": float(correct[sel].mean()),
                      "steps": int(sel.sum())} if sel.any() else None)
    pos = np.arange(nll.shape[1]) // episode_steps
    by_pos = {}
    for lo, hi in POSITIONS:
        cols = (pos >= lo) & (pos < hi)
        for name, sel in (("search", step_search), ("solved", ~step_search)):
            s = sel & cols[None, :]
            by_pos[f"{lo + 1}-{hi} {name}"] = (float(nll[s].mean()) if s.any() else None)
    out["by_position"] = by_pos
    ep_nll = nll.reshape(nll.shape[0], -1, episode_steps).mean(axis=(0, 2))
    out["nll_by_episode"] = ep_nll.tolist()
    return out


# ---------------------------------------------------------------------- analysis
def analyse(args: Args, cfg, work: Path) -> dict[str, Any]:
    from experiments import context_scaling as cs
    from experiments.context_scaling_floor import model_nll, run_losses
    from rl_ring.data.store import EpisodeStore

    runs = [r for r in run_losses(work, last_steps=100) if r["agent"] == "ad"]
    if not runs:
        raise ValueError(f"--workdir {work}: no finished ad-w<W>-seed<S> run (train/"
                         f"metrics.jsonl and record.json) in it")
    found = sorted(p.parent for p in work.glob("data-ad*/store.json"))
    if len(found) != 1:
        raise ValueError(f"--workdir {work}: expected one AD training store (data-ad*/"
                         f"store.json), found {[p.name for p in found] or 'none'}")
    data_dir = found[0]
    steps, episodes = cfg.episode_steps, cfg.history_episodes
    t0 = time.perf_counter()
    train = EpisodeStore.load(data_dir)
    per_hist = train.num_episodes // episodes
    if train.num_episodes != per_hist * episodes or np.any(train.episode_lengths != steps):
        raise ValueError(f"{data_dir}: expected histories of {episodes} episodes of {steps} "
                         f"steps each (the {args.env} configuration)")
    train_search = search_mask(train, episodes)
    windows = sorted({r["window"] for r in runs})
    weights = {str(w): search_weight(train_search, w) for w in windows}
    first = first_success(train_search)
    log(f"training data: {per_hist} histories, first success at episode "
        f"{np.median(first):.0f} (median); search share of training targets "
        + ", ".join(f"w{w}: {weights[str(w)]:.3f}" for w in windows))

    tasks = cs.heldout_tasks(cfg)[: args.tasks or None]
    fresh = []
    for i, learner in enumerate(cfg.learners):
        fresh.append(cs.source_histories(cfg, learner, tasks, seed=args.seed + 101 * i))
    store = fresh[0] if len(fresh) == 1 else cs.concat_stores(fresh)
    h = store.num_episodes // episodes
    # history after history, as the history sampler streams them (model_nll's windows)
    store = store.select(np.lexsort((store.episode_extras["episode_in_history"],
                                     store.episode_extras["history_id"])))
    search = search_mask(store, episodes)
    log(f"fresh histories: {h} ({len(cfg.learners)} sources x {len(tasks)} held-out tasks), "
        f"search share {search.mean():.3f}, first success at episode "
        f"{np.median(first_success(search)):.0f} (median) "
        f"({time.perf_counter() - t0:.0f} s)")
    for r in runs:
        t1 = time.perf_counter()
        scored = model_nll(work / f"ad-w{r['window']}-seed{r['seed']}" / "train", store,
                           episodes * steps, batch=args.batch)
        r.update(phase_scores(scored["nll"], scored["correct"], search, steps))
        log(f"ad-w{r['window']}-seed{r['seed']}: loss search {r['search']['nll']:.3f} "
            f"(accuracy {r['search']['accuracy']:.3f}), solved {r['solved']['nll']:.3f} "
            f"({r['solved']['accuracy']:.3f}) in {time.perf_counter() - t1:.0f} s")
    configs = []
    for w in windows:
        rs = [r for r in runs if r["window"] == w]
        row: dict[str, Any] = {"window": w, "seeds": [r["seed"] for r in rs],
                               "train_search_share": weights[str(w)]}
        for phase in ("search", "solved", "all"):
            for k in ("nll", "accuracy"):
                v = [r[phase][k] for r in rs if r[phase]]
                row[f"{phase}_{k}"] = float(np.mean(v))
                row[f"{phase}_{k}_std"] = float(np.std(v)) if len(v) > 1 else None
        configs.append(row)
    return {"env": args.env, "workdir": str(work), "episode_steps": steps,
            "history_episodes": episodes, "train_histories": per_hist,
            "train_first_success_median": float(np.median(first)),
            "fresh_histories": h, "fresh_tasks": len(tasks), "learners": list(cfg.learners),
            "fresh_search_share": float(search.mean()),
            "fresh_first_success_median": float(np.median(first_success(search))),
            "configs": configs,
            "runs": [{k: v for k, v in r.items() if not k.startswith("curve_")} for r in runs],
            "wall_s": time.perf_counter() - t0}


def plot(result: dict[str, Any], path: Path) -> Path:
    from experiments.bench import common

    plt = common.pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    configs = result["configs"]
    x = np.arange(len(configs))
    for j, (phase, color) in enumerate((("search", "#d62728"), ("solved", "#1f77b4"))):
        ax1.bar(x + (j - 0.5) * 0.38, [c[f"{phase}_nll"] for c in configs], 0.38,
                yerr=[c[f"{phase}_nll_std"] or 0 for c in configs], color=color,
                label=f"{phase} steps")
    ax1.set_xticks(x, [f"{c['window']} episodes\n(search {c['train_search_share']:.0%} of "
                       f"training)" for c in configs], fontsize=8)
    ax1.set_ylabel("loss on fresh held-out histories (nats)")
    ax1.set_title("teacher-forced loss by phase (bars: mean over seeds, ± std)")
    ax1.legend(fontsize=8)
    for w in sorted({r["window"] for r in result["runs"]}):
        curves = [r["nll_by_episode"] for r in result["runs"] if r["window"] == w]
        ax2.plot(np.arange(1, len(curves[0]) + 1), np.mean(curves, axis=0),
                 label=f"window {w}")
    ax2.axvline(result["fresh_first_success_median"], color="k", ls=":", lw=1,
                label="sources' median first success")
    ax2.set_xscale("log")
    ax2.set_xlabel("episode of the history")
    ax2.set_ylabel("loss per step (nats)")
    ax2.set_title(f"{result['env']}: loss along the history")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    common.save_png(fig, path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.context_scaling_phases [options]``."""
    import tyro

    from experiments import context_scaling as cs
    from rl_ring.io import check_results, write_json

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.context_scaling_phases", description=__doc__)
    try:
        if args.env != "darkroom-hard":
            raise ValueError(f"--env {args.env!r}: the phase analysis needs fixed-length "
                             f"episodes (darkroom-hard)")
        work = Path(args.workdir)
        if not work.is_dir():
            raise ValueError(f"--workdir {work}: no such folder (expected a context-scaling "
                             f"work folder holding data-ad/ and ad-w<W>-seed<S>/ runs)")
        path = Path(args.out) / RESULTS
        check_results([path.with_suffix(".json"), path.with_suffix(".png")],
                      workdir=None, overwrite=args.overwrite,
                      what="context_scaling_phases' results")
        result = analyse(args, cs.main_config(args.env), work)
        path.parent.mkdir(parents=True, exist_ok=True)
        result["files"] = {"plot": plot(result, path.with_suffix(".png")).name}
        write_json(result, path.with_suffix(".json"))
    except (ValueError, OSError) as err:
        print(f"context_scaling_phases: {err}", file=sys.stderr)
        return 2
    for c in result["configs"]:
        print(f"window {c['window']} ({len(c['seeds'])} seeds): search "
              f"{c['train_search_share']:.1%} of training targets; loss search "
              f"{c['search_nll']:.3f}, solved "
              f"{c['solved_nll']:.3f}; accuracy search {c['search_accuracy']:.3f}, solved "
              f"{c['solved_accuracy']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
