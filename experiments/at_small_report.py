"""Summaries, tables, memory plans and plots of the small-scale AT / DT / BC grid
(:mod:`experiments.at_exorl_small`)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rl_ring.io import save_figure, write_json

#: Compiled step variants of the memory plan: attention, mesh.
MEMORY_VARIANTS = (("reference", "seq=1"), ("blockwise", "seq=1"), ("ring", "seq=8"))


def run_scores(rep: dict[str, Any]) -> dict[str, Any]:
    """One trained model's evaluation: mean over evaluation seeds of the per-seed means."""
    summ = rep["summary"]["return"]
    return {
        "last": summ["last"]["mean"], "best_of_n": summ["best_of_n"]["mean"],
        "per_trial": summ["per_trial"]["mean"], "trials": rep["trials"],
        "episodes": len(rep["episodes"]), "complete_rows": rep["summary"]["complete_rows"],
        "total_rows": rep["summary"]["total_rows"], "eval_wall_s": rep["timing"]["wall_s"],
    }


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; None for fewer than two values)."""
    x = np.asarray([v for v in values if v is not None], np.float64)
    if x.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else None,
            "n": int(x.size)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``table[task][setting]``: last, best-of-n, first trial and per-trial curve (mean +- std
    over training seeds), training loss and wall time."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    keys = sorted({(r["task"], r["setting"]) for r in runs},
                  key=lambda k: [r["task"] for r in runs].index(k[0]))
    order = list(dict.fromkeys(r["setting"] for r in runs))
    for task, name in sorted(keys, key=lambda k: (k[0] != keys[0][0], order.index(k[1]))):
        rs = [r for r in runs if (r["task"], r["setting"]) == (task, name)]
        curves = np.asarray([r["eval"]["per_trial"] for r in rs], np.float64)
        table.setdefault(task, {})[name] = {
            "seeds": [r["seed"] for r in rs],
            "last": mean_std([r["eval"]["last"] for r in rs]),
            "best_of_n": mean_std([r["eval"]["best_of_n"] for r in rs]),
            "first_trial": mean_std([r["eval"]["per_trial"][0] for r in rs]),
            # Trial k = 4, 16, 64: where an AT-k model's context holds k trials, as in training.
            "at_trial": {str(k): mean_std([r["eval"]["per_trial"][k - 1] for r in rs])
                         for k in (4, 16, 64) if k <= curves.shape[1]},
            "per_trial_mean": curves.mean(axis=0).tolist(),
            "per_trial_std": (curves.std(axis=0, ddof=1).tolist() if len(rs) > 1
                              else [None] * curves.shape[1]),
            "per_seed_last": [r["eval"]["last"] for r in rs],
            "per_seed_best_of_n": [r["eval"]["best_of_n"] for r in rs],
            "loss_first": mean_std([r["loss_first"] for r in rs]),
            "loss_last": mean_std([r["loss_last"] for r in rs]),
            "train_wall_s": mean_std([r["wall_s"] for r in rs]),
            "eval_wall_s": mean_std([r["eval"]["eval_wall_s"] for r in rs]),
            "seq_len": rs[0]["seq_len"], "batch_size": rs[0]["batch_size"],
            "attention": rs[0]["attention"], "mesh": rs[0]["mesh"],
        }
    return table


def checks(table: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The expectations, tested rather than assumed: each is measured, never asserted."""
    out: dict[str, Any] = {}
    for task, cols in table.items():
        d = data[task]
        last = {k: v["last"]["mean"] for k, v in cols.items()}
        ats = sorted((k for k in cols if k.startswith("at")), key=lambda k: int(k[2:]))
        c: dict[str, Any] = {
            "dataset_median": d["return_median"], "dataset_p90": d["return_p90"],
            "above_median": {k: v > d["return_median"] for k, v in last.items()},
            "at_or_above_p90": {k: v >= d["return_p90"] for k, v in last.items()},
        }
        if "bc" in last and "dt" in last:
            c["dt_gt_bc"] = last["dt"] > last["bc"]
        if ats and "dt" in last:
            c["best_at_gt_dt"] = max(last[k] for k in ats) > last["dt"]
        if len(ats) > 1:
            vals = [last[k] for k in ats]
            c["at_rises_with_n"] = all(b > a for a, b in zip(vals, vals[1:], strict=False))
            c["at_by_n"] = dict(zip(ats, vals, strict=True))
        out[task] = c
    return out


# ---------------------------------------------------------------------- memory
def memory_plan(cfg, task, settings, run_dir: Callable) -> list[dict[str, Any]]:
    """Compiled per-device memory of every AT setting's training step (seed 0's shape) with
    dense, blockwise and ring attention; nothing runs, nothing is allocated."""
    from agents.run import shape_from_workdir
    from rl_ring.train.plan import plan_step

    # Compiling takes minutes: the plan is kept in the workdir for the settings it covers.
    cache = Path(cfg.workdir) / f"memory_plan-{task.name}.json"
    key = [s.name for s in settings if s.agent == "at"]
    if cache.exists():
        saved = json.loads(cache.read_text())
        if saved["settings"] == key:
            return saved["rows"]
    rows = []
    for s in settings:
        if s.agent != "at":
            continue
        workdir = run_dir(cfg, task, s, cfg.seeds[0])
        base = shape_from_workdir(workdir)
        for impl, mesh in MEMORY_VARIANTS:
            shape = base.replace(model=base.model.replace(attn_impl=impl,
                                                          attn_layout="contiguous"),
                                 mesh=mesh, name=f"{task.name}/{s.name}")
            rep = plan_step(shape)
            rows.append({
                "task": task.name, "setting": s.name, "impl": impl, "mesh": mesh,
                "devices": rep.devices, "batch_size": rep.batch_size, "seq_len": rep.seq_len,
                "num_params": rep.num_params, "peak_bytes": rep.peak_bytes,
                "temp_bytes": rep.temp_bytes, "argument_bytes": rep.argument_bytes,
                "compile_s": rep.compile_s,
                "command": f"rl-ring plan {workdir} --impl {impl} --layout contiguous "
                           f"--mesh {mesh}",
            })
    write_json({"settings": key, "rows": rows}, cache)
    return rows


# ---------------------------------------------------------------------- summary
def summarise(cfg, data, runs, memory, *, tiny: bool, wall_s: float) -> dict[str, Any]:
    table = aggregate(runs)
    return {
        "format": "rl_ring.at_small", "version": 1,
        "tiny": tiny,
        "config": dataclasses.asdict(cfg),
        "platform": {"machine": platform.machine(), "cpus": os.cpu_count(),
                     "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")},
        "data": data,
        "table": table,
        "checks": checks(table, data),
        "memory": memory,
        "runs": runs,
        "wall_s": wall_s,
        "std": "sample standard deviation (ddof=1) over training seeds of each seed's mean "
               "over its evaluation episodes",
    }


def _fmt(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.2f}" + ("" if stat["std"] is None else f" ± {stat['std']:.2f}")


def table_lines(result: dict[str, Any]) -> list[str]:
    """Markdown tables: per task, each setting's last trial and best of n side by side."""
    trials = result["config"]["trials"]
    lines = []
    for task, cols in result["table"].items():
        d = result["data"][task]
        lines.append(f"**{task}** (`{d['env']}`, {d['episodes']} episodes of "
                     f"{d['episode_length']} steps; dataset return median "
                     f"{d['return_median']:.2f}, top decile {d['return_p90']:.2f}, "
                     f"max {d['return_max']:.2f})")
        lines.append("")
        ks = [k for k in next(iter(cols.values()))["at_trial"] if int(k) < trials]
        lines.append("| setting | tokens x batch | attention | first trial | "
                     + "".join(f"trial {k} | " for k in ks)
                     + f"last trial ({trials}) | best of {trials} | loss first -> last | "
                     "train s |")
        lines.append("|---" * (8 + len(ks)) + "|")
        for name, v in cols.items():
            lines.append(
                f"| {name} | {v['seq_len']} x {v['batch_size']} | {v['attention']} "
                f"({v['mesh']}) | {_fmt(v['first_trial'])} | "
                + "".join(f"{_fmt(v['at_trial'][k])} | " for k in ks)
                + f"{_fmt(v['last'])} | {_fmt(v['best_of_n'])} | {v['loss_first']['mean']:.3f} "
                f"-> {v['loss_last']['mean']:.3f} | {v['train_wall_s']['mean']:.0f} |")
        lines.append("")
    if result.get("memory"):
        lines.append("| setting | tokens x batch | attention | devices | per-device peak |")
        lines.append("|---|---|---|---|---|")
        for m in result["memory"]:
            lines.append(f"| {m['setting']} | {m['seq_len']} x {m['batch_size']} | {m['impl']} "
                         f"| {m['devices']} | {m['peak_bytes'] / 2**20:.1f} MiB |")
    return lines


# ---------------------------------------------------------------------- files
def write(result: dict[str, Any], out: Path) -> None:
    """The JSON, the results plot and (with a memory plan) the memory plot."""
    write_json(result, out)
    plot(result, out.with_suffix(".png"))
    if result.get("memory"):
        plot_memory(result["memory"], out.with_name(out.stem + "_memory.png"))


def plot(result: dict[str, Any], path: Path) -> None:
    """Per task: last trial and best of n per setting (bars, +-std over seeds) against the
    dataset's median / top decile / best, and the mean return against the trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(result["table"])
    trials = result["config"]["trials"]
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 3.8 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks, strict=True):
        cols, d = result["table"][task], result["data"][task]
        names = list(cols)
        x = np.arange(len(names))
        for off, key, label, hatch in ((-0.2, "last", "last trial", None),
                                       (0.2, "best_of_n", f"best of {trials}", "//")):
            means = [cols[n][key]["mean"] for n in names]
            stds = [cols[n][key]["std"] or 0.0 for n in names]
            row[0].bar(x + off, means, 0.4, yerr=stds, capsize=3, label=label, hatch=hatch,
                       alpha=0.8)
        for key, style, label in (("return_median", ":", "data median"),
                                  ("return_p90", "--", "data top decile"),
                                  ("return_max", "-", "data best")):
            row[0].axhline(d[key], color="k", ls=style, lw=1, label=label)
        # Zoom on the range where the settings and the data's upper part differ.
        tops = [cols[n][k]["mean"] + (cols[n][k]["std"] or 0.0) for n in names
                for k in ("last", "best_of_n")]
        lows = [cols[n]["last"]["mean"] - (cols[n]["last"]["std"] or 0.0) for n in names]
        lo, hi = min([*lows, d["return_median"]]), max([*tops, d["return_max"]])
        row[0].set_ylim(lo - 0.15 * (hi - lo), hi + 0.1 * (hi - lo))
        row[0].set_xticks(x, names)
        row[0].set_ylabel("episode return")
        row[0].set_title(f"{task}: mean ± std over {len(result['config']['seeds'])} seeds")
        row[0].legend(fontsize=7, loc="lower right")
        t = np.arange(1, trials + 1)
        for n in names:
            m = np.asarray(cols[n]["per_trial_mean"], float)
            row[1].plot(t, m, marker="o", ms=3, label=n)
            s = cols[n]["per_trial_std"]
            if s[0] is not None:
                s = np.asarray(s, float)
                row[1].fill_between(t, m - s, m + s, alpha=0.12)
        row[1].axhline(d["return_median"], color="k", ls=":", lw=1)
        row[1].set_xlabel("trial (AT: earlier trials in context)")
        row[1].set_ylabel("return")
        row[1].set_title(f"{task}: return per trial")
        row[1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_memory(memory: list[dict[str, Any]], path: Path) -> None:
    """Per-device peak of the compiled training step against n, per attention."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for impl, mesh in MEMORY_VARIANTS:
        pts = [m for m in memory if m["impl"] == impl]
        if not pts:
            continue
        ax.plot([int(m["setting"][2:]) for m in pts], [m["peak_bytes"] / 2**20 for m in pts],
                marker="o", label=f"{impl} ({mesh})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("trajectories in context n")
    ax.set_ylabel("per-device peak of one training step (MiB)")
    ax.set_title("compiled memory (XLA:CPU), equal tokens per batch")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
