"""Does a model trained on short windows use a longer context? Zero-shot context length.

Each finished grid run of ``--window`` episodes in a ``context_scaling`` run folder is played
again on every held-out task with a context of ``--context`` episodes (the KV-cached policy
of ``rl-ring eval --context-steps``, a quarter of the context sliding out when full), next to
its own evaluation with its training window. Same checkpoint, tasks, evaluation seeds and
episodes: only the context at play changes. ::

    python -m experiments.context_scaling_zeroshot --workdir runs/context_scaling/darkroom-hard \
        --window 16 --context 256

Writes ``results/context_scaling_zeroshot.json`` + ``.png``. Each evaluation is kept in the
run's folder (``eval-ctx<C>/``, the ``rl-ring eval`` report) and reused when its options are
the same; it re-scores alone with the command in the JSON.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments import context_scaling as cs

RESULTS = "context_scaling_zeroshot"
SAME = ("env", "trials", "envs", "seeds", "first_seed", "task_split", "greedy", "sample",
        "temperature", "slide_steps", "context_steps", "max_steps")
"""Report config fields that make two evaluations the same (with the checkpoint, played
by its KV-cached policy)."""


@dataclass(frozen=True)
class Args:
    """Options of the zero-shot context-length evaluation."""

    workdir: str = "runs/context_scaling/darkroom-hard"
    """A grid run folder of ``experiments.context_scaling`` (its finished runs)."""
    agent: str = "ad"
    """The agent of the runs."""
    window: int = 16
    """The training window (episodes) of the runs played again."""
    context: int = 256
    """Episodes of context at play (> --window)."""
    seeds: int = 3
    """Training seeds (runs ``<agent>-w<window>-seed<S>``, each must be finished)."""
    out: str = "results"
    """Directory of the JSON / PNG results."""
    overwrite: bool = False
    """Replace result files already in --out."""


def eval_config(args: Args, cfg: cs.ScalingConfig, ckpt: Path, out: Path):
    """The ``rl-ring eval`` options of one run at ``args.context`` episodes: the experiment's
    own held-out tasks, rows and evaluation seeds."""
    from rl_ring.eval import EvalConfig

    slide = max(1, int(args.context * cfg.slide_fraction)) * cfg.episode_steps
    return EvalConfig(**cs.grid_eval_options(cfg), out=str(out), checkpoint=str(ckpt),
                      trials=cfg.eval_episodes, context_steps=cfg.window_steps(args.context),
                      slide_steps=slide)


def same_eval(report: dict[str, Any], ecfg) -> bool:
    """Whether a saved, complete report is the evaluation ``ecfg`` asks for."""
    saved, want = report.get("config", {}), dataclasses.asdict(ecfg)
    return (bool(report.get("complete")) and all(saved.get(k) == want[k] for k in SAME)
            and str(saved.get("policy", "")).startswith("checkpoint:")
            and Path(saved.get("checkpoint") or "").resolve() == Path(ecfg.checkpoint).resolve())


def play(ecfg) -> tuple[dict[str, Any], bool]:
    """The report of ``ecfg`` (reused when saved), and whether it was reused."""
    from rl_ring.cli.eval import wiring
    from rl_ring.eval import evaluate

    saved = Path(ecfg.out) / "report.json"
    if saved.exists():
        report = json.loads(saved.read_text())
        if same_eval(report, ecfg):
            return report, True
    return evaluate(ecfg, **wiring(ecfg)), False


def command(ecfg) -> str:
    return (f"rl-ring eval --checkpoint {ecfg.checkpoint} --env {ecfg.env} --trials "
            f"{ecfg.trials} --envs {ecfg.envs} --seeds {ecfg.seeds} --first-seed "
            f"{ecfg.first_seed} --task-split test --context-steps {ecfg.context_steps} "
            f"--slide-steps {ecfg.slide_steps} --out DIR")


def run(args: Args) -> dict[str, Any]:
    from rl_ring.io import write_json

    work = Path(args.workdir)
    if args.context <= args.window:
        raise ValueError(f"--context {args.context}: expected more episodes than the "
                         f"training --window {args.window}")
    runs = []
    for s in range(args.seeds):
        rdir = work / cs.run_name(args.agent, args.window, s)
        if not (rdir / "record.json").exists():
            raise ValueError(f"--workdir {work}: no finished run {rdir.name} (record.json)")
        record = json.loads((rdir / "record.json").read_text())
        cfg = cs.record_config(record)
        if cfg.bandit:
            raise ValueError(f"--workdir {work}: a bandit run folder; this evaluation is for "
                             f"the grids ({', '.join(cs.GRID_ENVS)})")
        ecfg = eval_config(args, cfg, rdir / "train", rdir / f"eval-ctx{args.context}")
        t0 = time.perf_counter()
        report, reused = play(ecfg)
        tasks = cs.heldout_tasks(cfg)
        long = cs.return_summary(cs.report_returns(report, tasks, cfg.eval_episodes),
                                 cs.optimal_returns(cfg))
        own = record["eval"]
        runs.append({"seed": s, "own": {k: own[k] for k in ("final_mean", "final_sem", "curve")},
                     "long": {k: long[k] for k in ("final_mean", "final_sem", "curve")},
                     "difference": long["final_mean"] - own["final_mean"],
                     "paired_sem": cs._sem(np.asarray(long["final_per_task"])
                                           - np.asarray(own["final_per_task"])),
                     "reused": reused, "wall_s": time.perf_counter() - t0,
                     "command": command(ecfg)})
        print(f"seed {s}: final return {own['final_mean']:.3f} with {args.window} episodes, "
              f"{long['final_mean']:.3f} with {args.context}"
              f"{' (reused)' if reused else ''}")
    own_f = np.array([r["own"]["final_mean"] for r in runs])
    long_f = np.array([r["long"]["final_mean"] for r in runs])
    summary = {"workdir": str(work), "agent": args.agent, "env": cfg.env,
               "window": args.window, "context": args.context,
               "eval_episodes": cfg.eval_episodes, "final_episodes": long["final_episodes"],
               "own_final": stat(own_f), "long_final": stat(long_f),
               "optimal": long["optimal"], "runs": runs}
    out = Path(args.out)
    summary["files"] = {"plot": plot(summary, out / f"{RESULTS}.png").name}
    write_json(summary, out / f"{RESULTS}.json")
    return summary


def stat(x: np.ndarray) -> dict[str, Any]:
    """Mean, std over training seeds (ddof=0, as context_scaling's) and the seeds' values."""
    return {"mean": float(x.mean()), "std": float(x.std()), "per_seed": x.tolist()}


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rl_ring.io import save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(1, summary["eval_episodes"] + 1)
    for key, label in (("own", f"{summary['window']}-episode window (trained)"),
                       ("long", f"{summary['context']}-episode context (zero-shot)")):
        curves = np.array([r[key]["curve"] for r in summary["runs"]])
        m, s = curves.mean(0), curves.std(0)
        ax.plot(x, m, label=label)
        ax.fill_between(x, m - s, m + s, alpha=0.2)
    ax.axhline(summary["optimal"], color="k", ls=":", label="optimum")
    ax.set_xlabel("in-context episode")
    ax.set_ylabel("return (mean over held-out tasks; band: std over seeds)")
    ax.set_title(f"{summary['env']}, {summary['agent']}: trained on {summary['window']} "
                 f"episodes, played with {summary['context']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m experiments.context_scaling_zeroshot [options]``."""
    import tyro

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv,
                    prog="python -m experiments.context_scaling_zeroshot",
                    description=__doc__)
    try:
        from rl_ring.io import check_results

        path = Path(args.out) / RESULTS
        check_results([path.with_suffix(".json"), path.with_suffix(".png")],
                      workdir=args.workdir, overwrite=args.overwrite,
                      what="the zero-shot results")
        run(args)
    except (ValueError, OSError) as err:
        print(f"context_scaling_zeroshot: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
