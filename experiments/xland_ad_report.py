"""Summary, table and plot of the XLand-MiniGrid AD experiment (``experiments.xland_ad``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _mean_curve(curves: list[list[float | None]]) -> tuple[list[float | None], list[float | None]]:
    y = np.asarray([[np.nan if v is None else v for v in c] for c in curves], np.float64)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            m, s = np.nanmean(y, 0), np.nanstd(y, 0)
    return ([None if np.isnan(v) else float(v) for v in m],
            [None if np.isnan(v) else float(v) for v in s])


def last_half(curve: list[float | None]) -> float | None:
    """Mean over the last half of the in-context episodes."""
    vals = [v for v in curve[len(curve) // 2:] if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(base, records: list[dict], baselines: dict, data: dict) -> dict[str, Any]:
    """One entry per context length: per-seed and mean curves, last-half returns."""
    by_window: dict[str, Any] = {}
    keys = sorted({(r.get("agent", "ad"), r["window_steps"]) for r in records})
    for agent, w in keys:
        runs = [r for r in records if (r.get("agent", "ad"), r["window_steps"]) == (agent, w)]
        curves = [r["eval"]["per_episode"] for r in runs]
        mean, std = _mean_curve(curves)
        seeds = [last_half(c) for c in curves]
        # Keys: the window for AD ("4096"), "<agent>-<window>" for the others ("dpt-4096").
        by_window[str(w) if agent == "ad" else f"{agent}-{w}"] = {
            "agent": agent, "window_steps": w, "seeds": [r["train_seed"] for r in runs],
            "per_episode_mean": mean, "per_episode_std_over_seeds": std,
            "last_half_return_per_seed": seeds,
            "last_half_return": float(np.mean([s for s in seeds if s is not None]))
            if any(s is not None for s in seeds) else None,
            "first_episode_return": mean[0] if mean else None,
            "final_loss": [r["train"]["history"][-1].get("loss") if r["train"]["history"]
                           else None for r in runs],
            "tokens_per_s": [r["train"]["tokens_per_s"] for r in runs],
            "train_s": [r["train_s"] for r in runs],
            "eval_s": [r["eval"]["wall_s"] for r in runs],
        }
    src = baselines["source_curve"]
    return {
        "env": base.env, "config": records[0]["config"] if records else {},
        "data": {k: data[k] for k in ("histories", "steps", "episodes") if k in data}
        | {"train_rulesets": data.get("rulesets"), "source_train_curve": data.get("curve")},
        "heldout_rulesets": baselines["rulesets"],
        "windows": by_window,
        "baselines": {"source_curve": src, "source_last_half": last_half(src),
                      "noise_levels": baselines["noise_levels"],
                      "expert": baselines["expert"], "random": baselines["random"]},
    }


def table(summary: dict[str, Any]) -> list[str]:
    b = summary["baselines"]
    lines = [f"XLand AD on {summary['env']}, held-out rulesets "
             f"{len(summary['heldout_rulesets'])}; mean return of an episode",
             f"{'policy':<34}{'episode 1':>10}{'last half':>10}"]
    for e in summary["windows"].values():
        first = e["first_episode_return"]
        lh = e["last_half_return"]
        label = f"{e['agent'].upper()}, {e['window_steps']}-step context"
        lines.append(f"{label:<34}"
                     f"{first if first is not None else float('nan'):>10.3f}"
                     f"{lh if lh is not None else float('nan'):>10.3f}")
    src = b["source_curve"]
    lines.append(f"{'source (noisy expert) curve':<34}"
                 f"{src[0] if src and src[0] is not None else float('nan'):>10.3f}"
                 f"{b['source_last_half'] or float('nan'):>10.3f}")
    for key, e in b["noise_levels"].items():
        lines.append(f"{'source at noise ' + key:<34}{'':>10}{e['mean']:>10.3f}")
    return lines


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_ring.io import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in summary["windows"].values():
        y = np.asarray([np.nan if v is None else v for v in e["per_episode_mean"]])
        s = np.asarray([np.nan if v is None else v for v in e["per_episode_std_over_seeds"]])
        x = np.arange(1, len(y) + 1)
        ax.plot(x, y, label=f"{e['agent'].upper()}, {e['window_steps']:,}-step context "
                f"({len(e['seeds'])} seed{'s' if len(e['seeds']) != 1 else ''})")
        ax.fill_between(x, y - s, y + s, alpha=0.2)
    b = summary["baselines"]
    src = np.asarray([np.nan if v is None else v for v in b["source_curve"]])
    ax.plot(np.arange(1, len(src) + 1), src, "k--", label="source (noisy expert)")
    for key, e in b["noise_levels"].items():
        style = {"0.0": ("g", "expert"), "1.0": ("r", "random")}.get(key, ("0.6", None))
        ax.axhline(e["mean"], color=style[0], lw=0.8, ls=":",
                   label=style[1] or f"noise {key}")
    ax.set_xlabel("in-context episode")
    ax.set_ylabel("return (held-out rulesets)")
    ax.set_title(summary["env"])
    ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    plt.close(fig)
    return path
