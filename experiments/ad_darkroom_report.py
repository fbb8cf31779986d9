"""Tables and plots of the Algorithm Distillation reproduction (``experiments.ad_darkroom``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rl_ring.io import save_figure


def _arr(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], np.float64)


def _mean_std(values: list[float]) -> dict[str, float | None]:
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "values": v.tolist()}


def _mean_se(values: list[float]) -> dict[str, Any] | None:
    """Mean and standard error (std with ddof=1 over sqrt(n)) of per-seed values."""
    if not values:
        return None
    v = np.asarray(values, np.float64)
    se = float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None
    return {"mean": float(v.mean()), "se": se, "n": len(v), "values": v.tolist()}


def summarize_main(records: list[dict[str, Any]], baselines: dict[str, Any]) -> dict[str, Any]:
    """The main result: every training seed's curves and their mean +- std over seeds."""
    out: dict[str, Any] = {
        "format": "rl_ring.ADReproduction", "version": 1,
        "config": records[0]["config"], "seeds": [r["config"]["train_seed"] for r in records],
        "std": "sample standard deviation (ddof=1) over training seeds",
        "runs": [compact(r) for r in records],
    }
    for split in ("test", "train"):
        if split not in records[0]["eval"]:
            continue
        evs = [r["eval"][split] for r in records]
        curves = np.stack([_arr(e["per_episode"]) for e in evs])
        out[f"ad_{split}"] = {
            "tasks": evs[0]["tasks"], "optimal": evs[0]["optimal"],
            "window": evs[0]["window"],
            "per_episode_mean": curves.mean(0).tolist(),
            "per_episode_std": (curves.std(0, ddof=1) if len(evs) > 1
                                else np.zeros(curves.shape[1])).tolist(),
            "window_return": _mean_std([e["window_return"] for e in evs]),
            "window_fraction_of_optimal": _mean_std(
                [e["window_fraction_of_optimal"] for e in evs]),
            # One value per (training seed, evaluation seed): a single evaluation seed is
            # noise (measured: 36-81% of optimal for one quickstart model).
            "by_eval_seed": _mean_se([w / evs[0]["optimal"] for e in evs
                                      for w in e.get("eval_seed_window_returns", [])]),
        }
        every = [c for e in evs for c in e.get("eval_seed_curves", [])]
        if len(every) > 1:
            y = np.stack([_arr(c) for c in every])
            out[f"ad_{split}"]["per_episode_se"] = (y.std(0, ddof=1) / np.sqrt(len(y))).tolist()
    out["loss"] = {k: _mean_std([r["loss"][k]["loss"] for r in records])
                   for k in ("train_tasks", "heldout_tasks")}
    src = records[0]["source_heldout"]
    out["source_heldout"] = {k: src[k] for k in ("learner", "mean", "sem", "window_return",
                                                 "window_fraction_of_optimal")}
    out["baselines"] = {}
    for name, b in baselines.items():
        if "sem" in b:
            stats = {k: b[k] for k in ("learner", "mean", "sem")}
            y = _arr(b["mean"])[: len(out["ad_test"]["per_episode_mean"])]
            lo, hi = out["ad_test"]["window"]
            stats["window_return"] = float(np.mean(y[lo - 1:hi]))
            out["baselines"][name] = stats
        else:
            lo, hi = out["ad_test"]["window"]
            out["baselines"][name] = {**b, "window_return": float(
                np.mean(_arr(b["per_episode"])[lo - 1:hi]))}
    out["timing"] = {"per_run": [r["timing"] for r in records]}
    return out


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """A run's record without its bulky parts (datasets' task lists, the training curve)."""
    hist = record["train"]["history"]
    tail = hist[-max(1, len(hist) // 5):]
    return {
        "name": record["name"], "config": record["config"], "timing": record["timing"],
        "final_train_loss": float(np.mean([h["loss"] for h in tail])),
        "tokens_per_s": record["train"]["tokens_per_s"], "loss": record["loss"],
        "eval": {k: {kk: v[kk] for kk in ("optimal", "window", "window_return",
                                          "window_fraction_of_optimal", "per_episode")}
                 for k, v in record["eval"].items()},
        "eval_by_step": record["eval_by_step"],
        "source_heldout": {k: record["source_heldout"][k] for k in (
            "learner", "window_return", "window_fraction_of_optimal", "mean")},
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def _ms(stat: dict[str, Any], fmt: str = ".2f") -> str:
    s = f"{stat['mean']:{fmt}}"
    return s if stat.get("std") is None else f"{s} ± {stat['std']:{fmt}}"


def main_table(summary: dict[str, Any]) -> list[str]:
    """Markdown table: return at a few in-context episodes, the 20-40 window, % of optimal."""
    t = summary["ad_test"]
    lo, hi = t["window"]
    n = len(t["per_episode_mean"])
    cols = [c for c in (1, 2, 5, 10) if c <= n]
    head = ["policy (held-out goals unless said)", *[f"ep {c}" for c in cols],
            f"ep {lo}-{hi}", "% of optimal"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, curve, window, frac):
        y = _arr(curve)
        vals = [f"{y[c - 1]:.2f}" if c - 1 < len(y) else "n/a" for c in cols]
        lines.append("| " + " | ".join([name, *vals, window, frac]) + " |")

    seeds = len(summary["seeds"])
    row(f"AD ({seeds} training seeds)", t["per_episode_mean"], _ms(t["window_return"]),
        _ms({k: (None if v is None else 100 * v) if k != "values" else v
             for k, v in t["window_fraction_of_optimal"].items()}, ".0f") + "%")
    if "ad_train" in summary:
        tr = summary["ad_train"]
        row("AD, training goals", tr["per_episode_mean"], _ms(tr["window_return"]),
            _ms({k: (None if v is None else 100 * v) if k != "values" else v
                 for k, v in tr["window_fraction_of_optimal"].items()}, ".0f") + "%")
    src = summary["source_heldout"]
    row(f"source ({src['learner']}) learning on held-out goals", src["mean"],
        f"{src['window_return']:.2f}", _pct(src["window_fraction_of_optimal"]))
    for name, b in summary["baselines"].items():
        curve = b.get("per_episode", b.get("mean"))
        row(name.replace("_", " "), curve, f"{b['window_return']:.2f}",
            _pct(b["window_return"] / t["optimal"]))
    row("optimal", [t["optimal"]] * n, f"{t['optimal']:.2f}", "100%")
    loss = summary["loss"]
    lines.append("")
    by = t.get("by_eval_seed")
    if by:
        se = f" ± {100 * by['se']:.1f}" if by["se"] is not None else ""
        lines.append(f"AD on held-out goals, episodes {lo}-{hi}: {100 * by['mean']:.1f}{se}% of "
                     f"optimal (mean ± standard error over {by['n']} evaluations: "
                     f"{len(summary['seeds'])} training seed(s) x evaluation seeds)")
    lines.append(f"loss on training-goal histories {_ms(loss['train_tasks'], '.3f')}, on "
                 f"held-out-goal histories {_ms(loss['heldout_tasks'], '.3f')}")
    return lines


def experiment_tables(log: dict[str, Any], names: list[str]) -> list[str]:
    """One markdown table per experiment."""
    lines = []
    for name in names:
        exp = log["experiments"][name]
        lines += ["", f"### {name}: {exp['question']}", "",
                  "| run | held-out ep 20-40 | % opt | training goals ep 20-40 | % opt | "
                  "loss train-goal / held-out-goal | train s |", "|---|---|---|---|---|---|---|"]
        for r in exp["runs"]:
            te, tr = r["eval"]["test"], r["eval"].get("train")
            train_cols = (f"{tr['window_return']:.2f} | {_pct(tr['window_fraction_of_optimal'])}"
                          if tr else "n/a | n/a")
            lines.append(
                f"| {r['name']} | {te['window_return']:.2f} | "
                f"{_pct(te['window_fraction_of_optimal'])} | {train_cols} | "
                f"{r['loss']['train_tasks']['loss']:.3f} / "
                f"{r['loss']['heldout_tasks']['loss']:.3f} | {r['timing']['train_s']:.0f} |")
            for point in r.get("eval_by_step") or []:
                lines.append(f"| &nbsp; at step {point['step']} | {point['window_return']:.2f} | "
                             f"{_pct(point['window_fraction_of_optimal'])} | | | | |")
    return lines


def plot_main(summary: dict[str, Any], path: Path) -> Path:
    """Return against in-context episode: AD (held-out and training goals), the source, the
    baselines and the optimum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = summary["ad_test"]
    n = len(t["per_episode_mean"])
    x = np.arange(1, n + 1)
    fig, ax = plt.subplots(figsize=(10, 4.8))
    m = _arr(t["per_episode_mean"])
    seeds = len(summary["seeds"])
    by = t.get("by_eval_seed") or {"n": 1}
    if "per_episode_se" in t:
        s, band = _arr(t["per_episode_se"]), f"± standard error over {by['n']} evaluations"
    elif seeds > 1:
        s, band = _arr(t["per_episode_std"]), f"± std over {seeds} training seeds"
    else:
        s, band = np.zeros_like(m), "one evaluation, no band"
    ax.plot(x, m, "o-", ms=3, color="C0",
            label=f"AD, held-out goals ({seeds} training seed{'s' * (seeds > 1)}; {band})")
    ax.fill_between(x, m - s, m + s, color="C0", alpha=0.25)
    for run in summary["runs"]:
        ax.plot(x, _arr(run["eval"]["test"]["per_episode"]), color="C0", lw=0.6, alpha=0.4)
    if "ad_train" in summary:
        ax.plot(x, _arr(summary["ad_train"]["per_episode_mean"]), "s--", ms=3, color="C2",
                label="AD, training goals")
    src = summary["source_heldout"]
    y = _arr(src["mean"])[:n]
    ax.plot(np.arange(1, len(y) + 1), y, color="C1",
            label=f"source ({src['learner']}) learning on held-out goals "
                  f"(its histories are {len(_arr(src['mean']))} episodes long)")
    for i, (name, b) in enumerate(summary["baselines"].items()):
        y = _arr(b.get("per_episode", b.get("mean")))[:n]
        ax.plot(np.arange(1, len(y) + 1), y, color=f"C{3 + i}", lw=1,
                label=name.replace("_", " ") + (" (held-out goals)" if name == "random" else ""))
    ax.axhline(t["optimal"], color="k", ls=":", label=f"optimal ({t['optimal']:.2f})")
    lo, hi = t["window"]
    ax.axvspan(lo - 0.5, hi + 0.5, color="0.9", zorder=0,
               label=f"scoring window (episodes {lo}-{hi})")
    ax.set_xlabel("in-context episode")
    ax.set_ylabel("return")
    frac = (by["mean"] if "mean" in by else t["window_fraction_of_optimal"]["mean"])
    ax.set_title(f"Algorithm Distillation on {summary['config']['env']}, held-out goals\n"
                 f"episodes {lo}-{hi}: {100 * frac:.0f}% of optimal", fontsize=10)
    # Beside the axes, so that no curve is hidden behind it.
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = save_figure(fig, path, dpi=100)
    plt.close(fig)
    return out


def plot_experiments(log: dict[str, Any], path: Path) -> Path:
    """One panel per experiment: % of optimal over episodes 20-40, held-out vs training goals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exps = [(k, v) for k, v in log["experiments"].items() if v["runs"]]
    cols = min(3, len(exps))
    rows = -(-len(exps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, exp) in zip(axes.flat, exps, strict=False):
        labels = [r["name"].removeprefix(f"{name}-") for r in exp["runs"]]
        te = [100 * (r["eval"]["test"]["window_fraction_of_optimal"] or 0) for r in exp["runs"]]
        tr = [100 * (r["eval"]["train"]["window_fraction_of_optimal"] or 0)
              if "train" in r["eval"] else np.nan for r in exp["runs"]]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, te, 0.4, label="held-out goals")
        ax.bar(x + 0.2, tr, 0.4, label="training goals")
        ax.set_xticks(x, labels, rotation=20, fontsize=8)
        ax.set_ylim(0, 105)
        ax.axhline(80, color="k", ls=":", lw=1)
        ax.set_title(name)
        ax.set_ylabel("% of optimal, episodes 20-40")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(exps):]:
        ax.axis("off")
    fig.tight_layout()
    out = save_figure(fig, path, dpi=100)
    plt.close(fig)
    return out
