"""The fruitless searches in Dark Room DAgger data: how long they last, and whether the agent
hovers next to the goal during them.

A DAgger step's rollouts (``context_scaling --dagger-from ...``) are appended after the
earlier data of its run folder (``data-ad``), so the last ``--histories`` learning histories
are the newest rollouts. For each folder this counts, over those histories:

- ``search_share``: the fraction of their episodes that come before the history's first
  episode with a positive return (fruitless searches);
- ``adjacent_share``: the fraction of the steps of those episodes at which the agent stands
  next to the goal (Manhattan distance 1). A searcher that has ruled out the cells around a
  goal it cannot reach (``--dagger-withhold``: the moves onto it replaced) keeps coming back
  to it; a real search passes by rarely. ``chance_adjacent``: the share of the room's other
  cells next to the goal (4 of 288 on Dark Room hard, less at a wall).

Usage::

    python -m experiments.dagger_search --folders runs/context_scaling/<folder> [...] \\
        [--histories 230] [--tag NAME]

Writes ``<out>/dagger_search[_<tag>].json``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = "dagger_search"


@dataclass(frozen=True)
class Args:
    """Options of the fruitless-search analysis."""

    folders: tuple[str, ...] = ()
    """Context-scaling run folders of a Dark Room family, each holding data-ad/."""
    histories: int = 230
    """The last N learning histories of each folder's data (a DAgger step's rollouts: one
    per training goal, 230 on Dark Room hard)."""
    env: str = "darkroom-hard"
    """Grid family of the data (a Dark Room family: one goal per task)."""
    out: str = "results"
    tag: str = ""
    """Results file ``dagger_search_<tag>.json``."""
    overwrite: bool = False


def search_stats(store, size: int, histories: int) -> dict[str, Any]:
    """Fruitless-search shares of the last ``histories`` learning histories of ``store``
    (episode extras ``history_id``, ``task_id``, ``episode_in_history``; observations start
    with the agent's x, y; task id = the goal's cell id in a ``size`` x ``size`` room)."""
    from envs.gridworld import cell_xy
    from experiments.context_scaling import search_episodes

    x = store.episode_extras
    hist = np.asarray(x["history_id"], np.int64)
    ids = np.unique(hist)
    if not 0 < histories <= len(ids):
        raise ValueError(f"--histories {histories}: expected 1 to {len(ids)} (the learning "
                         f"histories in the data)")
    keep = np.isin(hist, ids[-histories:])
    returns = np.asarray(store.episode_returns)
    fruitless = keep & search_episodes(returns, hist, x["episode_in_history"]) & (returns <= 0)
    starts = np.asarray(store.episode_starts, np.int64)
    lengths = np.diff(starts)
    step_ep = np.repeat(np.arange(len(lengths)), lengths)
    on = fruitless[step_ep]
    goal = np.array([cell_xy(t, size) for t in np.asarray(x["task_id"], np.int64)],
                    np.int64).reshape(-1, 2)
    pos = np.rint(np.asarray(store.observations)[on, :2]).astype(np.int64)
    dist = np.abs(pos - goal[step_ep[on]]).sum(1)
    around = [sum(0 <= gx + dx < size and 0 <= gy + dy < size
                  for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))) for gx, gy in goal[keep]]
    return {"histories": histories, "episodes": int(keep.sum()),
            "search_share": float(fruitless.sum() / keep.sum()),
            "search_steps": int(on.sum()),
            "adjacent_share": float(np.mean(dist == 1)) if len(dist) else None,
            "chance_adjacent": float(np.mean(around) / (size * size - 1))}


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.dagger_search --folders ...``."""
    import tyro

    from envs import make
    from rl_ring.data import EpisodeStore
    from rl_ring.io import check_results, write_json

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.dagger_search", description=__doc__)
    try:
        if not args.env.startswith("darkroom"):
            raise ValueError(f"--env {args.env!r}: expected a Dark Room family (one goal per "
                             f"task)")
        if not args.folders:
            raise ValueError("--folders: expected one or more run folders holding data-ad/")
        path = Path(args.out) / (RESULTS + (f"_{args.tag}" if args.tag else "") + ".json")
        check_results([path], workdir=None, overwrite=args.overwrite,
                      what="dagger_search's results")
        env = make(args.env).unwrapped
        size = int(env.size)
        env.close()
        rows = []
        for folder in args.folders:
            data = Path(folder) / "data-ad"
            if not (data / "store.json").exists():
                raise ValueError(f"--folders {folder}: no data-ad/store.json there (expected "
                                 f"a context-scaling run folder with AD data)")
            rows.append({"folder": str(folder),
                         **search_stats(EpisodeStore.load(data), size, args.histories)})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json({"env": args.env, "command": "python -m experiments.dagger_search "
                    + " ".join(sys.argv[1:] if argv is None else argv), "rows": rows}, path)
    except (ValueError, OSError) as err:
        print(f"dagger_search: {err}", file=sys.stderr)
        return 2
    for r in rows:
        adj = "-" if r["adjacent_share"] is None else f"{r['adjacent_share']:.2%}"
        print(f"{Path(r['folder']).name}: fruitless searches {r['search_share']:.1%} of "
              f"{r['episodes']} episodes; next to the goal at {adj} of their "
              f"{r['search_steps']} steps (chance {r['chance_adjacent']:.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
