"""Evaluation reports: per seed and per trial, last trial and best of n side by side.

Aggregation (one function, :func:`aggregate`, used for returns, normalised scores and
lengths alike) over a ``[seeds, envs, trials]`` table:

- only *complete* rows enter the statistics: rows whose every trial finished ``"ok"``
  (a failed row's finished episodes stay in ``episodes``, its failure in ``failures``);
- per seed: the mean over complete rows of each trial (``per_trial``), of the last trial
  (``last``) and of each row's best trial (``best_of_n``, the max over its trials);
- over seeds: ``mean`` and ``std`` of those per-seed means; ``std`` is the sample standard
  deviation (``ddof=1``) over the seeds that have at least one complete row, ``null``
  with fewer than two such seeds.

Normalised scores come from ``rl_ring.data.scores.normalized_score(name, returns)`` when
``has_reference(name)``; they are computed per episode and aggregated the same way.

The JSON schema (``format: "rl_ring.EvalReport"``, ``version: 1``) is documented in
``docs/evaluation.md`` and checked by :func:`validate_report`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rl_ring.eval.rollout import OK, SeedResult
from rl_ring.io import save_figure

REPORT_FORMAT = "rl_ring.EvalReport"
REPORT_VERSION = 1
STD_NOTE = (
    "std is the sample standard deviation (ddof=1) over per-seed means, taken over seeds "
    "with at least one complete row; null with fewer than two such seeds"
)


# ---------------------------------------------------------------------- scores
def score_function(name: str | None) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    """``(fn, note)``: ``fn(returns) -> normalised scores`` if ``name`` has a reference."""
    if not name:
        return None, "no score name given"
    try:
        from rl_ring.data import scores
    except ImportError as err:
        return None, f"rl_ring.data.scores is not available ({err})"
    if not scores.has_reference(name):
        return None, f"no reference scores for {name!r}"

    def fn(returns: np.ndarray) -> np.ndarray:
        return np.asarray(scores.normalized_score(name, np.asarray(returns)), dtype=np.float64)

    return fn, f"normalized_score({name!r}, returns)"


# ---------------------------------------------------------------------- tables
def tables(
    results: Sequence[SeedResult], num_envs: int, trials: int
) -> dict[str, np.ndarray]:
    """``return`` and ``length`` tables ``[seeds, envs, trials]``, NaN where not ``"ok"``."""
    shape = (len(results), num_envs, trials)
    ret = np.full(shape, np.nan)
    length = np.full(shape, np.nan)
    for s, res in enumerate(results):
        for ep in res.episodes:
            if ep.status == OK:
                ret[s, ep.env_index, ep.trial] = ep.episode_return
                length[s, ep.env_index, ep.trial] = ep.length
    return {"return": ret, "length": length}


def _nan_to_none(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return [_nan_to_none(v) for v in x.tolist()]
    if isinstance(x, list | tuple):
        return [_nan_to_none(v) for v in x]
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def _seed_stats(v: np.ndarray) -> tuple[float, float]:
    """Mean and ddof=1 std of per-seed values, ignoring seeds without complete rows."""
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan
    std = float(np.std(v, ddof=1)) if len(v) >= 2 else math.nan
    return float(np.mean(v)), std


def aggregate(table: np.ndarray) -> dict[str, Any]:
    """Statistics of a ``[seeds, envs, trials]`` table (NaN = episode not ok).

    Returns:
        ``{"per_seed": {"per_trial": [S, T], "last": [S], "best_of_n": [S]},
        "per_trial": {"mean": [T], "std": [T]}, "last": {"mean", "std"},
        "best_of_n": {"mean", "std"}, "complete_rows": [S]}`` as numpy/float values (NaN where
        undefined).
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 3:
        raise ValueError(f"aggregate: expected a [seeds, envs, trials] table, got {table.shape}")
    complete = np.isfinite(table).all(axis=2)  # [S, N]
    counts = complete.sum(axis=1)  # [S]
    masked = np.where(complete[..., None], table, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_trial = masked.sum(axis=1) / counts[:, None]  # [S, T]
        best_rows = np.where(complete, np.where(complete[..., None], table, -np.inf).max(2), 0.0)
        best = best_rows.sum(axis=1) / counts
    per_trial[counts == 0] = np.nan
    best[counts == 0] = np.nan
    last = per_trial[:, -1]
    trial_stats = [_seed_stats(per_trial[:, k]) for k in range(table.shape[2])]
    lm, ls = _seed_stats(last)
    bm, bs = _seed_stats(best)
    return {
        "per_seed": {"per_trial": per_trial, "last": last, "best_of_n": best},
        "per_trial": {
            "mean": np.array([m for m, _ in trial_stats]),
            "std": np.array([s for _, s in trial_stats]),
        },
        "last": {"mean": lm, "std": ls},
        "best_of_n": {"mean": bm, "std": bs},
        "complete_rows": counts,
    }


# ---------------------------------------------------------------------- report
def build_report(
    results: Sequence[SeedResult],
    *,
    config: dict[str, Any],
    num_envs: int,
    trials: int,
    score_name: str | None = None,
    complete: bool = True,
) -> dict[str, Any]:
    """The JSON-ready report of an evaluation (schema in ``docs/evaluation.md``)."""
    tabs = tables(results, num_envs, trials)
    fn, score_note = score_function(score_name)
    metrics: dict[str, dict[str, Any] | None] = {
        "return": aggregate(tabs["return"]),
        "normalized_score": None,
        "length": aggregate(tabs["length"]),
    }
    norm_table = None
    if fn is not None:
        norm_table = np.full_like(tabs["return"], np.nan)
        ok = np.isfinite(tabs["return"])
        norm_table[ok] = fn(tabs["return"][ok])
        metrics["normalized_score"] = aggregate(norm_table)

    def summary_of(agg: dict[str, Any] | None) -> dict[str, Any] | None:
        if agg is None:
            return None
        return _nan_to_none({
            "per_trial": {k: v for k, v in agg["per_trial"].items()},
            "last": agg["last"],
            "best_of_n": agg["best_of_n"],
        })

    seeds = []
    for s, res in enumerate(results):
        entry: dict[str, Any] = {
            "seed": res.seed,
            "complete_rows": int(metrics["return"]["complete_rows"][s]),
        }
        for key, agg in metrics.items():
            entry[key] = None if agg is None else _nan_to_none({
                "per_trial": agg["per_seed"]["per_trial"][s],
                "last": agg["per_seed"]["last"][s],
                "best_of_n": agg["per_seed"]["best_of_n"][s],
            })
        entry["timing"] = _timing([res])
        seeds.append(entry)

    episodes = []
    for s, res in enumerate(results):
        for ep in res.episodes:
            row = ep.to_json()
            row["normalized_score"] = (
                float(norm_table[s, ep.env_index, ep.trial])
                if norm_table is not None and ep.status == OK else None
            )
            episodes.append(row)
    failures = [
        {k: e[k] for k in ("seed", "env_index", "trial", "length", "error")}
        for e in episodes if e["status"] == "failed"
    ]
    used = int(np.isfinite(metrics["return"]["per_seed"]["last"]).sum())
    return {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "complete": bool(complete),
        "config": _nan_to_none(dict(config)),
        "num_seeds": len(results),
        "num_envs": num_envs,
        "trials": trials,
        "score_name": score_name,
        "normalization": score_note,
        "std": STD_NOTE,
        "summary": {
            "seeds_used": used,
            "complete_rows": int(metrics["return"]["complete_rows"].sum()),
            "total_rows": len(results) * num_envs,
            **{k: summary_of(v) for k, v in metrics.items()},
        },
        "seeds": seeds,
        "episodes": episodes,
        "failures": failures,
        "timing": _timing(results),
        "files": {},
    }


def _timing(results: Sequence[SeedResult]) -> dict[str, float]:
    steps = sum(r.env_steps for r in results)
    wall = sum(r.wall_s for r in results)
    return {
        "env_steps": steps,
        "wall_s": wall,
        "steps_per_s": steps / wall if wall > 0 else 0.0,
        "policy_s": sum(r.policy_s for r in results),
        "env_s": sum(r.env_s for r in results),
        "render_s": sum(r.render_s for r in results),
        "make_s": sum(r.make_s for r in results),
    }


# ---------------------------------------------------------------------- schema
_STAT = {"mean": (float, type(None)), "std": (float, type(None))}
_SCHEMA_TOP = {
    "format": str, "version": int, "complete": bool, "config": dict, "num_seeds": int,
    "num_envs": int, "trials": int, "score_name": (str, type(None)), "normalization": str,
    "std": str, "summary": dict, "seeds": list, "episodes": list, "failures": list,
    "timing": dict, "files": dict,
}
_EPISODE_KEYS = {
    "seed": int, "env_index": int, "trial": int, "episode_seed": (int, type(None)),
    "status": str, "return": (float, type(None)), "normalized_score": (float, type(None)),
    "length": int, "terminated": bool, "truncated": bool, "error": (str, type(None)),
}


def _expect(obj: dict, key: str, types, where: str) -> Any:
    if key not in obj:
        raise ValueError(f"eval report: missing key {where}{key}")
    if not isinstance(obj[key], types):
        raise ValueError(
            f"eval report: {where}{key} should be {types}, found {type(obj[key]).__name__}"
        )
    return obj[key]


def _check_metric(m: Any, trials: int, where: str) -> None:
    if m is None:
        return
    pt = _expect(m, "per_trial", (dict, list), where)
    if isinstance(pt, dict):  # summary: per_trial {mean: [T], std: [T]}
        for k in _STAT:
            vals = _expect(pt, k, list, f"{where}per_trial.")
            if len(vals) != trials:
                raise ValueError(f"eval report: {where}per_trial.{k} has {len(vals)} entries, "
                                 f"expected {trials} trials")
        for k in ("last", "best_of_n"):
            stat = _expect(m, k, dict, where)
            for sk, st in _STAT.items():
                _expect(stat, sk, st, f"{where}{k}.")
    else:  # per seed: per_trial [T], last, best_of_n numbers
        if len(pt) != trials:
            raise ValueError(f"eval report: {where}per_trial has {len(pt)} entries, "
                             f"expected {trials} trials")
        for k in ("last", "best_of_n"):
            _expect(m, k, (float, type(None)), where)


def validate_report(report: dict[str, Any]) -> None:
    """Checks a report against the documented schema; raises ValueError naming the key."""
    for key, types in _SCHEMA_TOP.items():
        _expect(report, key, types, "")
    if report["format"] != REPORT_FORMAT:
        raise ValueError(f"eval report: format is {report['format']!r}, expected {REPORT_FORMAT!r}")
    if report["version"] != REPORT_VERSION:
        raise ValueError(f"eval report: version {report['version']}, expected {REPORT_VERSION}")
    trials, summary = report["trials"], report["summary"]
    for key in ("seeds_used", "complete_rows", "total_rows"):
        _expect(summary, key, int, "summary.")
    for key in ("return", "length"):
        _check_metric(_expect(summary, key, dict, "summary."), trials, f"summary.{key}.")
    _check_metric(_expect(summary, "normalized_score", (dict, type(None)), "summary."), trials,
                  "summary.normalized_score.")
    if len(report["seeds"]) != report["num_seeds"]:
        raise ValueError(f"eval report: {len(report['seeds'])} seed entries, "
                         f"num_seeds is {report['num_seeds']}")
    for i, entry in enumerate(report["seeds"]):
        where = f"seeds[{i}]."
        _expect(entry, "seed", int, where)
        _expect(entry, "complete_rows", int, where)
        _check_metric(_expect(entry, "return", dict, where), trials, f"{where}return.")
        _check_metric(_expect(entry, "length", dict, where), trials, f"{where}length.")
        _check_metric(_expect(entry, "normalized_score", (dict, type(None)), where), trials,
                      f"{where}normalized_score.")
    expected_eps = report["num_seeds"] * report["num_envs"] * trials
    if len(report["episodes"]) != expected_eps:
        raise ValueError(f"eval report: {len(report['episodes'])} episodes, expected "
                         f"seeds x envs x trials = {expected_eps}")
    for i, ep in enumerate(report["episodes"]):
        for key, types in _EPISODE_KEYS.items():
            _expect(ep, key, types, f"episodes[{i}].")
        if ep["status"] not in ("ok", "failed", "not_run"):
            raise ValueError(f"eval report: episodes[{i}].status is {ep['status']!r}")
        if (ep["status"] == "ok") != (ep["return"] is not None):
            raise ValueError(f"eval report: episodes[{i}] has status {ep['status']!r} "
                             f"and return {ep['return']!r}")


# ---------------------------------------------------------------------- files
def plot_report(report: dict[str, Any], path: str | os.PathLike, *,
                x_label: str = "trial") -> Path:
    """PNG of mean return (and normalised score) against trial, +-std over seeds, with
    each seed's curve and the last / best-of-n figures in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("return", "normalized_score") if report["summary"][k] is not None]
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
    x = np.arange(1, report["trials"] + 1)
    for ax, key in zip(axes[0], keys, strict=True):
        summ = report["summary"][key]
        for entry in report["seeds"]:
            y = np.array([np.nan if v is None else v for v in entry[key]["per_trial"]])
            ax.plot(x, y, color="0.7", lw=0.8)
        mean = np.array([np.nan if v is None else v for v in summ["per_trial"]["mean"]])
        std = np.array([np.nan if v is None else v for v in summ["per_trial"]["std"]])
        last, best = summ["last"], summ["best_of_n"]
        label = (f"mean over {report['summary']['seeds_used']} seeds\n"
                 f"last {_fmt(last)}, best-of-{report['trials']} {_fmt(best)}")
        ax.plot(x, mean, "o-", color="C0", label=label)
        if best["mean"] is not None:
            ax.axhline(best["mean"], color="C1", ls="--", lw=1,
                       label=f"best-of-{report['trials']} (max over each row's trials)")
        ax.fill_between(x, mean - np.nan_to_num(std), mean + np.nan_to_num(std),
                        color="C0", alpha=0.2)
        ax.set_xlabel(x_label)
        ax.set_ylabel(key.replace("_", " "))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{report['config'].get('env_id', '')} - {report['config'].get('policy', '')}")
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def _fmt(stat: dict[str, float | None]) -> str:
    if stat["mean"] is None:
        return "n/a"
    std = "" if stat["std"] is None else f" +- {stat['std']:.4g}"
    return f"{stat['mean']:.4g}{std}"
